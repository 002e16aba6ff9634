package serverapp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

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
}

// serverSVID keeps the server's own X509-SVID (spiffe://<td>/tally/server)
// for its TLS listeners and renews it at half its lifetime.
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

// GetCertificate serves the current SVID to TLS handshakes.
func (s *serverSVID) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cert.Load(); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("server svid: not available")
}
