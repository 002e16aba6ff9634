package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

func TestBatchNewX509SVIDRefusals(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	ctx := context.Background()
	agent, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)
	other, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)
	created, err := s.Admin(t).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
		{SpiffeId: "spiffe://example.org/web", ParentId: agent.ID.String(), Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}}, DnsNames: []string{"web.example.org"}},
		{SpiffeId: "spiffe://example.org/db", ParentId: other.ID.String(), Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:2"}}},
	}})
	require.NoError(t, err)
	web, db := created.GetEntries()[0], created.GetEntries()[1]
	key := harness.NewKey(t)
	good := harness.CSR(t, key, []string{"spiffe://example.org/web"}, []string{"web.example.org"})

	withExt := func(ext pkix.Extension) []byte {
		u, _ := url.Parse("spiffe://example.org/web")
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			URIs: []*url.URL{u}, DNSNames: []string{"web.example.org"}, ExtraExtensions: []pkix.Extension{ext},
		}, key)
		require.NoError(t, err)
		return der
	}
	caFlag, _ := asn1.Marshal(struct{ IsCA bool }{true})
	certSign, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x04}, BitLength: 6}) // keyCertSign
	withIP := func() []byte {
		u, _ := url.Parse("spiffe://example.org/web")
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			URIs: []*url.URL{u}, DNSNames: []string{"web.example.org"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
		}, key)
		require.NoError(t, err)
		return der
	}
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff

	cases := []struct {
		name    string
		entryID string
		csr     []byte
		errHas  string
	}{
		{"extra URI SAN", web.GetId(), harness.CSR(t, key, []string{"spiffe://example.org/web", "spiffe://example.org/admin"}, []string{"web.example.org"}), "URI"},
		{"wrong SPIFFE ID", web.GetId(), harness.CSR(t, key, []string{"spiffe://example.org/admin"}, []string{"web.example.org"}), "spiffe://example.org/admin"},
		{"other trust domain", web.GetId(), harness.CSR(t, key, []string{"spiffe://evil.org/web"}, []string{"web.example.org"}), "evil.org"},
		{"extra DNS SAN", web.GetId(), harness.CSR(t, key, []string{"spiffe://example.org/web"}, []string{"web.example.org", "bank.com"}), "bank.com"},
		{"missing DNS SAN", web.GetId(), harness.CSR(t, key, []string{"spiffe://example.org/web"}, nil), "web.example.org"},
		{"IP SAN", web.GetId(), withIP(), "IP"},
		{"CA flag requested", web.GetId(), withExt(pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caFlag}), "basic"},
		{"keyCertSign requested", web.GetId(), withExt(pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: certSign}), "key usage"},
		{"garbage", web.GetId(), []byte("not a csr"), "csr"},
		{"bad signature", web.GetId(), badSig, "signature"},
		{"another agent's entry", db.GetId(), harness.CSR(t, key, []string{"spiffe://example.org/db"}, nil), "not authorized"},
		{"unknown entry", "4b1c5d7e-0000-4000-8000-000000000000", good, "not found"},
	}
	reqs := []*tallyv1.X509SVIDRequest{{EntryId: web.GetId(), Csr: good}}
	for _, c := range cases {
		reqs = append(reqs, &tallyv1.X509SVIDRequest{EntryId: c.entryID, Csr: c.csr})
	}
	resp, err := agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: reqs})
	require.NoError(t, err)
	require.Len(t, resp.GetResults(), len(reqs))
	require.Empty(t, resp.GetResults()[0].GetError(), "the good CSR in the same batch is signed")
	require.NotEmpty(t, resp.GetResults()[0].GetCertChain())
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := resp.GetResults()[i+1]
			require.Equal(t, c.entryID, r.GetEntryId())
			require.Empty(t, r.GetCertChain())
			require.Contains(t, strings.ToLower(r.GetError()), strings.ToLower(c.errHas))
		})
	}

	t.Run("too many CSRs in one call", func(t *testing.T) {
		big := make([]*tallyv1.X509SVIDRequest, 1001)
		for i := range big {
			big[i] = &tallyv1.X509SVIDRequest{EntryId: web.GetId(), Csr: good}
		}
		_, err := agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: big})
		require.Equal(t, codes.InvalidArgument, status.Code(err))
	})

	t.Run("JWT-SVID only for authorised entries with an audience", func(t *testing.T) {
		_, err := agent.Node.NewJWTSVID(ctx, &tallyv1.NewJWTSVIDRequest{EntryId: db.GetId(), Audience: []string{"x"}})
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
		_, err = agent.Node.NewJWTSVID(ctx, &tallyv1.NewJWTSVIDRequest{EntryId: web.GetId()})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	})
}
