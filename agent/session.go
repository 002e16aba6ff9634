package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/renew"
	"github.com/tallyid/tally/internal/reserved"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Credential produces the agent's attestation credential (the agent side
// of a node attestor: a join token, a projected service-account token).
type Credential interface {
	// Type is the attestation type on the wire (join_token, k8s_psat).
	Type() string
	// Data returns the credential, read fresh on every attestation.
	Data(ctx context.Context) ([]byte, error)
}

// Clock is what the agent needs of time; k8s.io/utils/clock's real and
// fake clocks have it.
type Clock interface {
	clock.WithTicker
	AfterFunc(d time.Duration, f func()) clock.Timer
}

// SessionConfig configures a Session.
type SessionConfig struct {
	TrustDomain spiffeid.TrustDomain
	// ServerAddress is the server's Node API, host:port.
	ServerAddress string
	// DataDir keeps the agent SVID, its key (0600) and the last bundle, so
	// that a restart does not attest again.
	DataDir string
	// TrustBundle is a PEM file with the server's X.509 authorities, to
	// authenticate the server before the first attestation; with
	// InsecureBootstrap the first attestation does not authenticate it.
	TrustBundle       string
	InsecureBootstrap bool
	// Credential attests the agent.
	Credential Credential
	Metrics    *Metrics
	// TaintJitter bounds how soon the agent SVID is renewed once the
	// server reports its signing key tainted: at a random time within
	// TaintJitter or a tenth of its remaining life, whichever is shorter
	// (as CacheConfig.TaintJitter for workload SVIDs). Default
	// DefaultTaintJitter.
	TaintJitter time.Duration
	// Clock times renewals, expiry checks and retries. Default: real.
	Clock Clock
	// Logger default: discard.
	Logger *slog.Logger
}

// Session is the agent's standing with the server: its identity (the agent
// SVID and the bundle, kept in DataDir), the mTLS connection made with it,
// and the loops that keep both current and follow the entries.
type Session struct {
	cfg       SessionConfig
	log       *slog.Logger
	serverID  spiffeid.ID
	id        *identity
	conn      *serverConn
	rand      func() float64 // the taint jitter's source; nil: math/rand/v2
	taintWake chan struct{}  // buffered(1): the tainted set changed

	mu       sync.Mutex
	tainted  taintSet      // as of the last sync step that named it; nil before
	streams  uint64        // sync streams that applied their first step
	streamUp chan struct{} // closed, and replaced, when one does
}

// OpenSession loads the stored identity, if any, and the bootstrap bundle.
// Close releases the connection.
func OpenSession(cfg SessionConfig) (*Session, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.TaintJitter == 0 {
		cfg.TaintJitter = DefaultTaintJitter
	}
	id, err := loadIdentity(cfg.DataDir, cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	if _, b := id.current(); b == nil && cfg.TrustBundle != "" {
		b, err := readBundlePEM(cfg.TrustDomain, cfg.TrustBundle)
		if err != nil {
			return nil, err
		}
		if err := id.setBundle(b); err != nil {
			return nil, err
		}
	}
	serverID := reserved.ServerID(cfg.TrustDomain)
	return &Session{cfg: cfg, log: cfg.Logger, serverID: serverID, id: id,
		conn:      newServerConn(cfg.ServerAddress, serverID, id, cfg.Clock),
		taintWake: make(chan struct{}, 1), streamUp: make(chan struct{})}, nil
}

// Close closes the connection to the server.
func (s *Session) Close() { s.conn.Close() }

// AgentID is the agent's SPIFFE ID, "" before it has one.
func (s *Session) AgentID() string {
	if svid, _ := s.id.current(); svid != nil {
		return svid.ID.String()
	}
	return ""
}

// SVIDNotAfter is when the agent SVID expires; zero before it has one.
func (s *Session) SVIDNotAfter() time.Time {
	if svid, _ := s.id.current(); svid != nil {
		return svid.Certificates[0].NotAfter
	}
	return time.Time{}
}

// Minter is the connection to the server, for the Cache.
func (s *Session) Minter() Minter { return s.conn }

// setTainted records the tainted X.509 CA keys a sync step named and, if
// they changed, wakes keepIdentity to check the agent SVID's signer.
func (s *Session) setTainted(set taintSet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tainted != nil && maps.Equal(s.tainted, set) {
		return
	}
	s.tainted = set
	select {
	case s.taintWake <- struct{}{}:
	default:
	}
}

func (s *Session) taints() taintSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tainted
}

// streamApplied counts a sync stream that applied its first step: the
// server has this agent's current state, and a report to it starts over.
func (s *Session) streamApplied() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams++
	close(s.streamUp)
	s.streamUp = make(chan struct{})
}

// syncStreams returns how many sync streams applied their first step and
// a channel closed when the next one does.
func (s *Session) syncStreams() (uint64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams, s.streamUp
}

// noteSVID records the agent SVID in the metrics; rotated: newly obtained.
func (s *Session) noteSVID(svid *x509svid.SVID, rotated bool) {
	setTime(s.cfg.Metrics.agentSVIDExpiry, svid.Certificates[0].NotAfter)
	if rotated {
		setTime(s.cfg.Metrics.lastRotation, s.cfg.Clock.Now())
	}
}

// Start reuses a stored, unexpired agent SVID, or attests until it
// succeeds or ctx ends; failures back off up to 30 s.
func (s *Session) Start(ctx context.Context) error {
	if svid, _ := s.id.current(); svid != nil && s.cfg.Clock.Now().Before(svid.Certificates[0].NotAfter) {
		s.log.Info("reusing the stored agent SVID; not attesting", logkey.SPIFFEID, svid.ID.String(), logkey.NotAfter, svid.Certificates[0].NotAfter)
		s.noteSVID(svid, false)
		return s.conn.reconnect()
	}
	bo := backoff.New(time.Second, 30*time.Second)
	for {
		err := s.attest(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.cfg.Metrics.rotationFailures.WithLabelValues(svidAgent).Inc()
		d := bo.Next()
		s.log.Error("attestation failed", logkey.Error, err, logkey.RetryIn, d)
		if s.sleep(ctx, d) != nil {
			return ctx.Err()
		}
	}
}

// Run keeps the agent SVID (keepIdentity) and follows the entries into
// cache (followEntries) until ctx is done. Call Start first.
func (s *Session) Run(ctx context.Context, cache *Cache) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.keepIdentity(ctx) })
	g.Go(func() error { return s.followEntries(ctx, cache) })
	return g.Wait()
}

// attest proves the node's identity to the server and stores the agent
// SVID and bundle it returns.
func (s *Session) attest(ctx context.Context) error {
	data, err := s.cfg.Credential.Data(ctx)
	if err != nil {
		return fmt.Errorf("agent: attestation data: %w", err)
	}
	if s.cfg.InsecureBootstrap {
		if _, b := s.id.current(); b == nil {
			s.log.Warn("INSECURE BOOTSTRAP: the server is not authenticated for this attestation; configure trust_bundle instead")
		}
	}
	_, known := s.id.current()
	cc, err := grpc.NewClient(s.cfg.ServerAddress,
		grpc.WithTransportCredentials(credentials.NewTLS(bootstrapTLS(s.id, s.serverID, s.cfg.InsecureBootstrap && known == nil))))
	if err != nil {
		return fmt.Errorf("agent: dial server: %w", err)
	}
	defer cc.Close()
	csr, key, err := newCSR(&x509.CertificateRequest{})
	if err != nil {
		return err
	}
	resp, err := tallyv1.NewNodeClient(cc).AttestAgent(ctx, &tallyv1.AttestAgentRequest{
		AttestationType: s.cfg.Credential.Type(), AttestationData: data, Csr: csr,
	})
	if err != nil {
		return fmt.Errorf("agent: attest: %w", err)
	}
	bundle, err := spiffebundle.Parse(s.cfg.TrustDomain, resp.GetBundle())
	if err != nil {
		return fmt.Errorf("agent: attest: bundle: %w", err)
	}
	svid, err := svidFromChain(resp.GetSvidChain(), key)
	if err != nil {
		return err
	}
	if err := s.id.setBundle(bundle); err != nil {
		return err
	}
	if err := s.id.setSVID(svid); err != nil {
		return err
	}
	s.cfg.Metrics.attestations.Inc()
	s.noteSVID(svid, true)
	s.log.Info("agent attested", logkey.SPIFFEID, svid.ID.String(), logkey.NotAfter, svid.Certificates[0].NotAfter)
	return s.conn.reconnect()
}

// renew replaces the agent SVID through RenewAgent.
func (s *Session) renew(ctx context.Context) error {
	node, _ := s.conn.Node()
	csr, key, err := newCSR(&x509.CertificateRequest{})
	if err != nil {
		return err
	}
	resp, err := node.RenewAgent(ctx, &tallyv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("agent: renew: %w", err)
	}
	svid, err := svidFromChain(resp.GetSvidChain(), key)
	if err != nil {
		return err
	}
	if err := s.id.setSVID(svid); err != nil {
		return err
	}
	s.noteSVID(svid, true)
	s.log.Info("agent SVID renewed", logkey.SPIFFEID, svid.ID.String(), logkey.NotAfter, svid.Certificates[0].NotAfter)
	return s.conn.reconnect()
}

// svidFromChain is the agent SVID in chain for the PKCS#8 key made for it.
func svidFromChain(chain [][]byte, key []byte) (*x509svid.SVID, error) {
	svid, err := x509svid.ParseRaw(concatDER(chain), key)
	if err != nil {
		return nil, fmt.Errorf("agent: SVID from server: %w", err)
	}
	return svid, nil
}

// keepIdentity renews the agent SVID at half its lifetime (less a jitter:
// renew.At), or within TaintJitter once the server reports its signing
// key tainted (taintRenewAt). When the SVID has expired (the server was
// unreachable for long) or the server no longer accepts it, the agent
// attests again once it can, instead of failing forever; failures back off
// up to 30s.
func (s *Session) keepIdentity(ctx context.Context) error {
	bo := backoff.New(time.Second, 30*time.Second)
	var serial string     // of the SVID renewAt is for
	var renewAt time.Time // computed once per SVID: a failed renewal retries after backoff
	var tainted bool      // renewAt was moved for a tainted signer
	for {
		svid, _ := s.id.current()
		leaf := svid.Certificates[0]
		now := s.cfg.Clock.Now()
		if leaf.SerialNumber.String() != serial {
			serial, renewAt, tainted = leaf.SerialNumber.String(), renew.At(now, leaf.NotBefore, leaf.NotAfter), false
		}
		if taints := s.taints(); !tainted && len(taints) > 0 {
			if signer := s.agentSigner(svid, now); taints.has(signer) {
				tainted = true
				renewAt = taintRenewAt(now, leaf.NotAfter, renewAt, s.cfg.TaintJitter, s.rand)
				s.log.Info("the agent SVID's signing key is tainted; renewing it early", logkey.ID, signer, "renew_in", renewAt.Sub(now))
			}
		}
		woke, werr := s.wait(ctx, renewAt.Sub(now), s.taintWake)
		if werr != nil {
			return nil
		}
		if woke {
			continue // the tainted set changed: check the signer again
		}
		var err error
		if !s.cfg.Clock.Now().Before(leaf.NotAfter) {
			s.log.Warn("agent SVID expired; attesting again", logkey.NotAfter, leaf.NotAfter)
			err = s.attest(ctx)
		} else {
			err = s.renew(ctx)
			if code := status.Code(err); err != nil && (code == codes.PermissionDenied || code == codes.Unauthenticated) {
				s.log.Warn("server refused the agent SVID; attesting again", logkey.Error, err)
				err = s.attest(ctx)
			}
		}
		if err == nil {
			bo.Reset()
			continue
		}
		s.cfg.Metrics.rotationFailures.WithLabelValues(svidAgent).Inc()
		d := bo.Next()
		s.log.Warn("keeping the agent SVID", logkey.Error, err, logkey.RetryIn, d)
		if err := s.sleep(ctx, d); err != nil {
			return nil
		}
	}
}

// agentSigner is the ID of the CA key that signed the agent SVID.
func (s *Session) agentSigner(svid *x509svid.SVID, now time.Time) string {
	_, bundle := s.id.current()
	if bundle == nil {
		return svidSigner(svid.Certificates, nil, now)
	}
	return svidSigner(svid.Certificates, bundle, now)
}

// sleep waits d on the agent's clock, or until ctx is done.
func (s *Session) sleep(ctx context.Context, d time.Duration) error {
	_, err := s.wait(ctx, d, nil)
	return err
}

// wait is sleep that also ends, reporting woke, when wake receives.
func (s *Session) wait(ctx context.Context, d time.Duration, wake <-chan struct{}) (woke bool, err error) {
	if d <= 0 {
		return false, ctx.Err()
	}
	t := s.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-wake:
		return true, nil
	case <-t.C():
		return false, nil
	}
}
