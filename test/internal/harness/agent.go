package harness

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Agent is a test client of the Node API holding an agent SVID.
type Agent struct {
	ID     spiffeid.ID
	SVID   *x509svid.SVID
	Bundle *spiffebundle.Bundle
	Node   tallyv1.NodeClient
}

// NewKey returns a P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

// CSR builds a DER CSR for key with the given URI and DNS SANs.
func CSR(t testing.TB, key crypto.Signer, uris []string, dns []string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		require.NoError(t, err)
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	return der
}

// AttestJoinToken attests a new agent with token and returns it connected
// with its SVID.
func (s *Server) AttestJoinToken(t testing.TB, token string) (*Agent, error) {
	t.Helper()
	return s.Attest(t, "join_token", []byte(token))
}

// Attest attests a new agent with any attestation type and data.
func (s *Server) Attest(t testing.TB, typ string, data []byte) (*Agent, error) {
	t.Helper()
	bundle := s.Bundle(t)
	key := NewKey(t)
	resp, err := tallyv1.NewNodeClient(s.Dial(t, bundle, nil)).AttestAgent(context.Background(), &tallyv1.AttestAgentRequest{
		AttestationType: typ,
		AttestationData: data,
		Csr:             CSR(t, key, nil, nil),
	})
	if err != nil {
		return nil, err
	}
	svid := SVID(t, resp.GetSvidChain(), key)
	b, err := spiffebundle.Parse(s.TrustDomain, resp.GetBundle())
	require.NoError(t, err)
	return &Agent{
		ID:     svid.ID,
		SVID:   svid,
		Bundle: b,
		Node:   tallyv1.NewNodeClient(s.Dial(t, b, TLSCert(svid))),
	}, nil
}

// NewToken generates a join token through the Admin API.
func (s *Server) NewToken(t testing.TB, alias string) string {
	t.Helper()
	resp, err := s.Admin(t).CreateJoinToken(context.Background(), &tallyv1.CreateJoinTokenRequest{SpiffeId: alias})
	require.NoError(t, err)
	return resp.GetToken()
}

// SVID parses a DER certificate chain and the key it was issued for.
func SVID(t testing.TB, chain [][]byte, key crypto.PrivateKey) *x509svid.SVID {
	t.Helper()
	var certs []byte
	for _, c := range chain {
		certs = append(certs, c...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	svid, err := x509svid.ParseRaw(certs, der)
	require.NoError(t, err)
	return svid
}
