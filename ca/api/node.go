// Package api implements the server's gRPC services: the Node API agents
// call and the Admin API. Domain errors become gRPC codes only here.
package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Authority signs SVIDs and publishes the trust bundle.
type Authority interface {
	SignX509SVID(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error)
	SignJWTSVID(ctx context.Context, p ca.JWTSVIDParams) (string, time.Time, error)
	Bundle() *spiffebundle.Bundle
	SubscribeBundle() (<-chan *spiffebundle.Bundle, func())
}

// Entries is what the Node API needs of the registry.
type Entries interface {
	Changes(sc registry.Scope, since uint64) registry.Delta
	Authorized(sc registry.Scope, entryID string) (store.Entry, error)
	Subscribe() (<-chan struct{}, func())
}

// Agents stores attested agents.
type Agents interface {
	GetAgent(ctx context.Context, id string) (store.Agent, error)
	PutAgent(ctx context.Context, a store.Agent) error
}

// NodeConfig configures the Node service.
type NodeConfig struct {
	TrustDomain spiffeid.TrustDomain
	Authority   Authority
	Entries     Entries
	Agents      Agents
	// Attestors by attestation type ("join_token", "k8s_psat").
	Attestors map[string]attest.NodeAttestor
	// AgentSVIDTTL is the lifetime of agent SVIDs (0: the authority default).
	AgentSVIDTTL time.Duration
	// JWTIssuer, if set, is the iss claim of JWT-SVIDs.
	JWTIssuer string
	// Exchanger performs the token exchanges agents forward
	// (ExchangeToken). Nil: the exchange is not configured and
	// ExchangeToken is Unimplemented.
	Exchanger Exchanger
	Metrics   *Metrics
	Clock     clock.WithTicker
	Logger    *slog.Logger
	// MaxBatch bounds the CSRs of one BatchNewX509SVID call. Default 1000.
	MaxBatch int
	// SnapshotChunk is how many entries one SyncEntries message carries.
	// Default 1000.
	SnapshotChunk int
	// RecheckInterval is how often an open SyncEntries stream re-checks that
	// its agent is still attested. Default 10s.
	RecheckInterval time.Duration
	// MaxAttestations bounds the AttestAgent calls in progress (default 64),
	// MaxAttestationsPerPeer those from one IP address (default 16); a call
	// waits for a place up to AttestWait (default 10s), then gets
	// ResourceExhausted.
	// Records, if set, records every issuance and attestation; Fleet, if
	// set, receives agents' ReportSVIDs; Tainted, if set, lists the tainted
	// X.509 CA keys sent to agents with the bundle.
	Records                Recorder
	Fleet                  Fleet
	Tainted                func() []string
	MaxAttestations        int
	MaxAttestationsPerPeer int
	AttestWait             time.Duration
}

// Node implements tallyv1.NodeServer.
type Node struct {
	tallyv1.UnimplementedNodeServer
	cfg   NodeConfig
	audit *slog.Logger
	peers *peerVerifier
	gate  *attestGate

	stopping chan struct{} // closed by EndStreams
	stopOnce sync.Once
}

// EndStreams ends every open SyncEntries stream, and any opened later, with
// Unavailable: agents reconnect (with backoff) to another replica or to this
// server once it is back. The server calls it when it shuts down, before the
// graceful stop, which would otherwise wait for streams that never end.
func (n *Node) EndStreams() { n.stopOnce.Do(func() { close(n.stopping) }) }

// NewNode returns the Node service.
func NewNode(cfg NodeConfig) *Node {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.SnapshotChunk == 0 {
		cfg.SnapshotChunk = 1000
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = 10 * time.Second
	}
	if cfg.MaxAttestations == 0 {
		cfg.MaxAttestations = 64
	}
	if cfg.MaxAttestationsPerPeer == 0 {
		cfg.MaxAttestationsPerPeer = 16
	}
	if cfg.AttestWait == 0 {
		cfg.AttestWait = 10 * time.Second
	}
	return &Node{cfg: cfg, audit: auditLogger(cfg.Logger), peers: newPeerVerifier(cfg.TrustDomain),
		gate:     newAttestGate(cfg.Clock, cfg.MaxAttestations, cfg.MaxAttestationsPerPeer, cfg.AttestWait),
		stopping: make(chan struct{})}
}

// AttestAgent verifies an agent credential and signs its first SVID.
func (n *Node) AttestAgent(ctx context.Context, req *tallyv1.AttestAgentRequest) (*tallyv1.AttestAgentResponse, error) {
	resp, who, err := n.attestAgent(ctx, req)
	n.recordAttestation(req.GetAttestationType(), who, resp, err)
	n.auditLog(ctx, who, "attest_agent", req.GetAttestationType(), err)
	return resp, toStatus(n.cfg.Logger, "AttestAgent", err)
}

func (n *Node) attestAgent(ctx context.Context, req *tallyv1.AttestAgentRequest) (*tallyv1.AttestAgentResponse, string, error) {
	attestor, ok := n.cfg.Attestors[req.GetAttestationType()]
	if !ok {
		return nil, "", fmt.Errorf("%w: unknown attestation type %q", errInvalid, req.GetAttestationType())
	}
	csr, err := ca.ValidateCSR(req.GetCsr())
	if err != nil {
		return nil, "", err
	}
	leave, err := n.gate.enter(ctx)
	if err != nil {
		return nil, "", err
	}
	defer leave()
	res, err := attestor.Attest(ctx, req.GetAttestationData())
	if err != nil {
		return nil, "", err
	}
	id := res.AgentID.String()
	prev, err := n.cfg.Agents.GetAgent(ctx, id)
	switch {
	case err == nil && prev.Banned:
		return nil, id, fmt.Errorf("%w: agent %s is banned", errPermission, id)
	case err == nil && !res.CanReattest:
		return nil, id, fmt.Errorf("%w: agent %s already attested", errPermission, id)
	case err != nil && !isNotFound(err):
		return nil, id, err
	}
	chain, err := n.sign(ctx, ca.X509SVIDParams{PublicKey: csr.PublicKey, ID: res.AgentID, TTL: n.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, id, err
	}
	now := n.cfg.Clock.Now()
	agent := store.Agent{
		ID:              id,
		AttestationType: req.GetAttestationType(),
		SerialNumber:    serialString(chain[0]),
		ExpiresAt:       chain[0].NotAfter,
		Selectors:       nodeSelectors(res.Selectors),
		Aliases:         res.Aliases,
		AttestedAt:      now,
		RenewedAt:       now,
	}
	if err := n.cfg.Agents.PutAgent(ctx, agent); err != nil {
		return nil, id, err
	}
	bundle, err := n.cfg.Authority.Bundle().Marshal()
	if err != nil {
		return nil, id, err
	}
	return &tallyv1.AttestAgentResponse{SpiffeId: id, SvidChain: derChain(chain), Bundle: bundle}, id, nil
}

// RenewAgent signs a new SVID for an attested agent.
func (n *Node) RenewAgent(ctx context.Context, req *tallyv1.RenewAgentRequest) (*tallyv1.RenewAgentResponse, error) {
	agent, err := n.authAgent(ctx)
	if err != nil {
		n.auditLog(ctx, "", "renew_agent", "", err)
		return nil, toStatus(n.cfg.Logger, "RenewAgent", err)
	}
	resp, err := n.renewAgent(ctx, agent, req)
	n.recordAgentRenewal(agent, resp, err)
	n.auditLog(ctx, agent.ID, "renew_agent", agent.ID, err)
	return resp, toStatus(n.cfg.Logger, "RenewAgent", err)
}

func (n *Node) renewAgent(ctx context.Context, agent store.Agent, req *tallyv1.RenewAgentRequest) (*tallyv1.RenewAgentResponse, error) {
	csr, err := ca.ValidateCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	chain, err := n.sign(ctx, ca.X509SVIDParams{PublicKey: csr.PublicKey, ID: spiffeid.RequireFromString(agent.ID), TTL: n.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, err
	}
	agent.PrevSerial, agent.SerialNumber = agent.SerialNumber, serialString(chain[0])
	agent.ExpiresAt = chain[0].NotAfter
	agent.RenewedAt = n.cfg.Clock.Now()
	if err := n.cfg.Agents.PutAgent(ctx, agent); err != nil {
		return nil, err
	}
	return &tallyv1.RenewAgentResponse{SvidChain: derChain(chain)}, nil
}

// SyncEntries streams the calling agent's entries: a snapshot or the
// changes after since_revision, then every later change, and the bundle
// whenever it changes. Every message with a bundle carries the tainted X.509
// keys (NodeConfig.Tainted), and the bundle is sent again, with the same
// sequence, whenever that set changes: the authority wakes its bundle
// subscribers on every slot change, a taint included. Each wake-up also
// re-checks the agent's SVID at once, so that a stream authenticated by a
// revoked key ends.
func (n *Node) SyncEntries(req *tallyv1.SyncEntriesRequest, stream tallyv1.Node_SyncEntriesServer) error {
	ctx := stream.Context()
	agent, err := n.authAgent(ctx)
	if err != nil {
		return toStatus(n.cfg.Logger, "SyncEntries", err)
	}
	entriesCh, stopEntries := n.cfg.Entries.Subscribe()
	defer stopEntries()
	bundleCh, stopBundle := n.cfg.Authority.SubscribeBundle()
	defer stopBundle()
	recheck := n.cfg.Clock.NewTicker(n.cfg.RecheckInterval)
	defer recheck.Stop()

	sc := scopeOf(agent)
	since, bundleSeq := req.GetSinceRevision(), req.GetBundleSequence()
	var sentTainted []string // the tainted X.509 keys last sent
	for {
		d := n.cfg.Entries.Changes(sc, since)
		var tainted []string
		if n.cfg.Tainted != nil {
			tainted = n.cfg.Tainted()
		}
		bundle, seq, err := n.bundleIfChanged(bundleSeq, !slices.Equal(tainted, sentTainted))
		if err != nil {
			return toStatus(n.cfg.Logger, "SyncEntries", err)
		}
		if !d.Empty() || bundle != nil || since == 0 {
			if err := n.sendDelta(stream, d, bundle, tainted); err != nil {
				return err
			}
			bundleSeq = seq
			if bundle != nil {
				sentTainted = tainted
			}
		}
		// Nothing for this agent up to d.Revision is nothing to send, but
		// the next Changes starts there: otherwise every write elsewhere
		// would lengthen what each idle agent's stream looks through.
		since = d.Revision
		select {
		case <-ctx.Done():
			return nil
		case <-n.stopping:
			return toStatus(n.cfg.Logger, "SyncEntries", errShuttingDown)
		case <-entriesCh:
		case <-bundleCh:
			// The key that signed the agent's SVID may have been revoked:
			// such an agent is refused at once, not at the next recheck.
			if _, err := n.authAgent(ctx); err != nil {
				return toStatus(n.cfg.Logger, "SyncEntries", err)
			}
		case <-recheck.C():
			if _, err := n.authAgent(ctx); err != nil {
				return toStatus(n.cfg.Logger, "SyncEntries", err)
			}
		}
	}
}

// bundleIfChanged returns the bundle and its sequence number; the bundle is
// nil if its sequence is have, unless force.
func (n *Node) bundleIfChanged(have uint64, force bool) ([]byte, uint64, error) {
	b := n.cfg.Authority.Bundle()
	seq, _ := b.SequenceNumber()
	if seq == have && !force {
		return nil, seq, nil
	}
	raw, err := b.Marshal()
	return raw, seq, err
}

// sendDelta sends d in chunks; the first message carries the deletions and,
// if not nil, the bundle with the tainted X.509 keys.
func (n *Node) sendDelta(stream tallyv1.Node_SyncEntriesServer, d registry.Delta, bundle []byte, tainted []string) error {
	chunk := n.cfg.SnapshotChunk
	first := true
	for first || len(d.Upserts) > 0 {
		k := min(chunk, len(d.Upserts))
		msg := &tallyv1.SyncEntriesResponse{
			Revision:          d.Revision,
			ChangedAtUnixNano: d.ChangedAt.UnixNano(),
			Snapshot:          d.Reset && first,
			More:              k < len(d.Upserts),
			Upserts:           make([]*tallyv1.Entry, 0, k),
		}
		for _, e := range d.Upserts[:k] {
			msg.Upserts = append(msg.Upserts, EntryToProto(e))
		}
		d.Upserts = d.Upserts[k:]
		if first {
			msg.DeletedIds = d.Deleted
			msg.Bundle = bundle
			if bundle != nil {
				msg.TaintedX509Ids = tainted
			}
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		first = false
	}
	return nil
}

// BatchNewX509SVID signs each CSR for which the calling agent is entitled
// to the entry; each refusal is reported in its own result.
func (n *Node) BatchNewX509SVID(ctx context.Context, req *tallyv1.BatchNewX509SVIDRequest) (*tallyv1.BatchNewX509SVIDResponse, error) {
	agent, err := n.authAgent(ctx)
	if err != nil {
		return nil, toStatus(n.cfg.Logger, "BatchNewX509SVID", err)
	}
	reqs := req.GetRequests()
	if len(reqs) > n.cfg.MaxBatch {
		return nil, toStatus(n.cfg.Logger, "BatchNewX509SVID", fmt.Errorf("%w: %d CSRs in one batch, at most %d", errInvalid, len(reqs), n.cfg.MaxBatch))
	}
	sc := scopeOf(agent)
	results := make([]*tallyv1.X509SVIDResult, len(reqs))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, r := range reqs {
		g.Go(func() error {
			chain, id, err := n.newX509SVID(ctx, sc, r)
			n.recordX509(agent, r.GetEntryId(), id, chain, err)
			res := &tallyv1.X509SVIDResult{EntryId: r.GetEntryId()}
			if err != nil {
				res.Error = err.Error()
			} else {
				res.CertChain = derChain(chain)
			}
			n.auditLog(ctx, agent.ID, "x509_svid", id, err)
			results[i] = res
			return nil
		})
	}
	_ = g.Wait()
	return &tallyv1.BatchNewX509SVIDResponse{Results: results}, nil
}

func (n *Node) newX509SVID(ctx context.Context, sc registry.Scope, r *tallyv1.X509SVIDRequest) ([]*x509.Certificate, string, error) {
	entry, err := n.cfg.Entries.Authorized(sc, r.GetEntryId())
	if err != nil {
		return nil, r.GetEntryId(), err
	}
	csr, err := ca.ValidateCSR(r.GetCsr())
	if err != nil {
		return nil, entry.SPIFFEID, err
	}
	id, err := spiffeid.FromString(entry.SPIFFEID)
	if err != nil {
		return nil, entry.SPIFFEID, err
	}
	if err := ca.CheckCSR(csr, id, entry.DNSNames); err != nil {
		return nil, entry.SPIFFEID, err
	}
	chain, err := n.sign(ctx, ca.X509SVIDParams{PublicKey: csr.PublicKey, ID: id, DNSNames: entry.DNSNames, TTL: entry.X509TTL})
	return chain, entry.SPIFFEID, err
}

// NewJWTSVID signs a JWT-SVID for an entry the agent is entitled to.
func (n *Node) NewJWTSVID(ctx context.Context, req *tallyv1.NewJWTSVIDRequest) (*tallyv1.NewJWTSVIDResponse, error) {
	agent, err := n.authAgent(ctx)
	if err != nil {
		return nil, toStatus(n.cfg.Logger, "NewJWTSVID", err)
	}
	resp, id, err := n.newJWTSVID(ctx, scopeOf(agent), req)
	n.recordJWT(agent, req.GetEntryId(), id, resp, err)
	n.auditLog(ctx, agent.ID, "jwt_svid", id, err)
	return resp, toStatus(n.cfg.Logger, "NewJWTSVID", err)
}

func (n *Node) newJWTSVID(ctx context.Context, sc registry.Scope, req *tallyv1.NewJWTSVIDRequest) (*tallyv1.NewJWTSVIDResponse, string, error) {
	entry, err := n.cfg.Entries.Authorized(sc, req.GetEntryId())
	if err != nil {
		return nil, req.GetEntryId(), err
	}
	id, err := spiffeid.FromString(entry.SPIFFEID)
	if err != nil {
		return nil, entry.SPIFFEID, err
	}
	token, exp, err := signJWT(ctx, n.cfg.Authority, n.cfg.Metrics, n.cfg.JWTIssuer, ca.JWTSVIDParams{ID: id, Audience: req.GetAudience(), TTL: entry.JWTTTL})
	if err != nil {
		return nil, entry.SPIFFEID, err
	}
	return &tallyv1.NewJWTSVIDResponse{Token: token, ExpiresAt: exp.Unix()}, entry.SPIFFEID, nil
}

// BatchNewJWTSVID signs a JWT-SVID per request for the entries the agent
// is entitled to; each refusal is reported in its own result.
func (n *Node) BatchNewJWTSVID(ctx context.Context, req *tallyv1.BatchNewJWTSVIDRequest) (*tallyv1.BatchNewJWTSVIDResponse, error) {
	agent, err := n.authAgent(ctx)
	if err != nil {
		return nil, toStatus(n.cfg.Logger, "BatchNewJWTSVID", err)
	}
	reqs := req.GetRequests()
	if len(reqs) > n.cfg.MaxBatch {
		return nil, toStatus(n.cfg.Logger, "BatchNewJWTSVID", fmt.Errorf("%w: %d requests in one batch, at most %d", errInvalid, len(reqs), n.cfg.MaxBatch))
	}
	sc := scopeOf(agent)
	results := make([]*tallyv1.JWTSVIDResult, len(reqs))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, r := range reqs {
		g.Go(func() error {
			resp, id, err := n.newJWTSVID(ctx, sc, r)
			n.recordJWT(agent, r.GetEntryId(), id, resp, err)
			res := &tallyv1.JWTSVIDResult{EntryId: r.GetEntryId()}
			if err != nil {
				res.Error = err.Error()
			} else {
				res.Token, res.ExpiresAt = resp.GetToken(), resp.GetExpiresAt()
			}
			n.auditLog(ctx, agent.ID, "jwt_svid", id, err)
			results[i] = res
			return nil
		})
	}
	_ = g.Wait()
	return &tallyv1.BatchNewJWTSVIDResponse{Results: results}, nil
}

// authAgent verifies the caller's agent SVID and returns its record: it
// must exist, not be banned, and the SVID must be its current or previous.
func (n *Node) authAgent(ctx context.Context) (store.Agent, error) {
	id, cert, err := n.peers.verify(ctx, n.cfg.Authority.Bundle(), n.cfg.Clock.Now())
	if err != nil {
		return store.Agent{}, err
	}
	if !isAgentID(id) {
		return store.Agent{}, fmt.Errorf("%w: %s is not an agent", errPermission, id)
	}
	agent, err := n.cfg.Agents.GetAgent(ctx, id.String())
	if isNotFound(err) {
		return store.Agent{}, fmt.Errorf("%w: agent %s is not attested (evicted?)", errPermission, id)
	}
	if err != nil {
		return store.Agent{}, err
	}
	serial := serialString(cert)
	switch {
	case agent.Banned:
		return store.Agent{}, fmt.Errorf("%w: agent %s is banned", errPermission, id)
	case serial != agent.SerialNumber && serial != agent.PrevSerial:
		return store.Agent{}, fmt.Errorf("%w: agent %s presented a superseded SVID", errPermission, id)
	}
	return agent, nil
}

func (n *Node) sign(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error) {
	return signX509(ctx, n.cfg.Authority, n.cfg.Metrics, p)
}

func (n *Node) auditLog(ctx context.Context, caller, action, target string, err error) {
	audit(ctx, n.audit, caller, action, target, err)
}

func scopeOf(a store.Agent) registry.Scope {
	return registry.Scope{AgentID: a.ID, Aliases: a.Aliases, Selectors: a.Selectors}
}

func nodeSelectors(in []attest.Selector) []store.Selector {
	out := make([]store.Selector, 0, len(in))
	for _, s := range in {
		out = append(out, store.Selector{Type: s.Type, Value: s.Value})
	}
	registry.SortSelectors(out)
	return slices.Compact(out)
}

func derChain(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}
