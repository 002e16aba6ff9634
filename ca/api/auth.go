package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// peerSVID verifies the caller's TLS client certificate as an X509-SVID of
// the trust domain, at time now, against the current X.509 authorities.
func peerSVID(ctx context.Context, td spiffeid.TrustDomain, authorities []*x509.Certificate, now time.Time) (spiffeid.ID, *x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: no peer", errUnauthenticated)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: no client certificate", errUnauthenticated)
	}
	certs := info.State.PeerCertificates
	id, _, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(td, authorities), x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: client certificate: %v", errUnauthenticated, err)
	}
	return id, certs[0], nil
}

// isAgentID reports whether id names an agent.
func isAgentID(id spiffeid.ID) bool {
	return strings.HasPrefix(id.Path(), "/tally/agent/")
}

func serialString(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
