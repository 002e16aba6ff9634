package serverapp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/renew"
)

// svidSigner is what the server's own SVID needs of the authority.
type svidSigner interface {
	SignX509SVID(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error)
	SubscribeBundle() (<-chan *spiffebundle.Bundle, func())
	TaintedX509IDs() []string
	Slots() []ca.SlotInfo
}

// serverSVID keeps the server's own X509-SVID (spiffe://<td>/tally/server)
// for its TLS listeners and renews it at half its lifetime, and at once when
// the key that signed it is tainted or leaves the bundle (revoked).
type serverSVID struct {
	id     spiffeid.ID
	signer svidSigner
	clock  clock.Clock
	log    *slog.Logger
	cert   atomic.Pointer[tls.Certificate]
}

func newServerSVID(id spiffeid.ID, signer svidSigner, clk clock.Clock, log *slog.Logger) *serverSVID {
	return &serverSVID{id: id, signer: signer, clock: clk, log: log}
}

// renew signs a fresh SVID with a new key.
func (s *serverSVID) renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("server svid: %w", err)
	}
	chain, err := s.signer.SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), ID: s.id})
	if err != nil {
		return fmt.Errorf("server svid: %w", err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	s.cert.Store(c)
	s.log.Info("server SVID renewed", logkey.SPIFFEID, s.id.String(), logkey.NotAfter, chain[0].NotAfter)
	return nil
}

// Run renews the SVID when renew.At says, until ctx is done; failures are
// retried with backoff.
func (s *serverSVID) Run(ctx context.Context) error {
	bundles, unsubscribe := s.signer.SubscribeBundle()
	defer unsubscribe()
	retry := backoff.New(time.Second, time.Minute)
	var wait time.Duration
	for {
		if c := s.cert.Load(); c != nil && retry.Failures() == 0 {
			now := s.clock.Now()
			wait = max(renew.At(now, c.Leaf.NotBefore, c.Leaf.NotAfter).Sub(now), 0)
		}
		t := s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-bundles:
			t.Stop()
			if !s.signerGone() {
				continue
			}
			s.log.Info("the key that signed the server SVID was tainted or revoked; renewing")
		case <-t.C():
		}
		if err := s.renew(ctx); err != nil {
			wait = retry.Next()
			s.log.Warn("renewing server SVID", logkey.Error, err, logkey.RetryIn, wait)
			continue
		}
		retry.Reset()
	}
}

// signerGone reports whether the current SVID's issuer is tainted or no
// longer one of the authority's X.509 slots (revoked).
func (s *serverSVID) signerGone() bool {
	c := s.cert.Load()
	if c == nil {
		return false
	}
	issuer := hex.EncodeToString(c.Leaf.AuthorityKeyId)
	if slices.Contains(s.signer.TaintedX509IDs(), issuer) {
		return true
	}
	return !slices.ContainsFunc(s.signer.Slots(), func(sl ca.SlotInfo) bool { return sl.Kind == ca.KindX509 && sl.ID == issuer })
}

// GetCertificate serves the current SVID to TLS handshakes.
func (s *serverSVID) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cert.Load(); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("server svid: not available")
}
