package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/renew"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// NodeAttestor produces the agent's attestation credential.
type NodeAttestor interface {
	// Type is the attestation type on the wire (join_token, k8s_psat).
	Type() string
	// Data returns the credential, read fresh on every attestation.
	Data(ctx context.Context) ([]byte, error)
}

// attest proves the node's identity to the server and stores the agent
// SVID and bundle it returns.
func (a *Agent) attest(ctx context.Context) error {
	data, err := a.attestor.Data(ctx)
	if err != nil {
		return fmt.Errorf("agent: attestation data: %w", err)
	}
	if a.cfg.InsecureBootstrap {
		if _, b := a.id.current(); b == nil {
			a.log.Warn("INSECURE BOOTSTRAP: the server is not authenticated for this attestation; configure trust_bundle instead")
		}
	}
	_, known := a.id.current()
	cc, err := grpc.NewClient(a.cfg.ServerAddress,
		grpc.WithTransportCredentials(credentials.NewTLS(bootstrapTLS(a.id, a.serverID, a.cfg.InsecureBootstrap && known == nil))))
	if err != nil {
		return fmt.Errorf("agent: dial server: %w", err)
	}
	defer cc.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	resp, err := tallyv1.NewNodeClient(cc).AttestAgent(ctx, &tallyv1.AttestAgentRequest{
		AttestationType: a.attestor.Type(), AttestationData: data, Csr: csr,
	})
	if err != nil {
		return fmt.Errorf("agent: attest: %w", err)
	}
	bundle, err := spiffebundle.Parse(a.td, resp.GetBundle())
	if err != nil {
		return fmt.Errorf("agent: attest: bundle: %w", err)
	}
	svid, err := svidFromChain(resp.GetSvidChain(), key)
	if err != nil {
		return err
	}
	if err := a.id.setBundle(bundle); err != nil {
		return err
	}
	if err := a.id.setSVID(svid); err != nil {
		return err
	}
	a.metrics.attestations.Inc()
	a.log.Info("agent attested", "spiffe_id", svid.ID.String(), "expires_at", svid.Certificates[0].NotAfter)
	return a.conn.reconnect()
}

// renew replaces the agent SVID through RenewAgent.
func (a *Agent) renew(ctx context.Context) error {
	node, _ := a.conn.Node()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
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
	if err := a.id.setSVID(svid); err != nil {
		return err
	}
	a.log.Info("agent SVID renewed", "spiffe_id", svid.ID.String(), "expires_at", svid.Certificates[0].NotAfter)
	return a.conn.reconnect()
}

func svidFromChain(chain [][]byte, key *ecdsa.PrivateKey) (*x509svid.SVID, error) {
	der := concatDER(chain)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	svid, err := x509svid.ParseRaw(der, pkcs8)
	if err != nil {
		return nil, fmt.Errorf("agent: SVID from server: %w", err)
	}
	return svid, nil
}

// keepIdentity renews the agent SVID at half its lifetime (less a jitter:
// renew.At). When the SVID
// has expired (the server was unreachable for long) or the server no longer
// accepts it, the agent attests again once it can, instead of failing
// forever; failures back off up to 30s.
func (a *Agent) keepIdentity(ctx context.Context) error {
	bo := backoff.New(time.Second, 30*time.Second)
	for {
		svid, _ := a.id.current()
		leaf := svid.Certificates[0]
		wait := renew.At(leaf.NotBefore, leaf.NotAfter).Sub(a.clock.Now())
		if err := a.sleep(ctx, wait); err != nil {
			return nil
		}
		var err error
		if !a.clock.Now().Before(leaf.NotAfter) {
			a.log.Warn("agent SVID expired; attesting again", "expired_at", leaf.NotAfter)
			err = a.attest(ctx)
		} else {
			err = a.renew(ctx)
			if code := status.Code(errors.Unwrap(err)); err != nil && (code == codes.PermissionDenied || code == codes.Unauthenticated) {
				a.log.Warn("server refused the agent SVID; attesting again", "error", err)
				err = a.attest(ctx)
			}
		}
		if err == nil {
			bo.Reset()
			continue
		}
		d := bo.Next()
		a.log.Warn("keeping the agent SVID", "error", err, "retry_in", d)
		if err := a.sleep(ctx, d); err != nil {
			return nil
		}
	}
}

// sleep waits d on the agent's clock, or until ctx is done.
func (a *Agent) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := a.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}
