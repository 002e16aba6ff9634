package e2e

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

// requireX509SVID checks every X509-SVID line of SPIFFE.md on what the
// server issued.
func requireX509SVID(t *testing.T, chain []*x509.Certificate, want spiffeid.ID, dns []string, bundle *spiffebundle.Bundle) {
	t.Helper()
	leaf := chain[0]
	require.Len(t, leaf.URIs, 1, "exactly one URI SAN")
	require.Equal(t, want.String(), leaf.URIs[0].String())
	require.NotEmpty(t, want.Path(), "leaf IDs have a non-root path")
	require.ElementsMatch(t, dns, leaf.DNSNames)
	require.Empty(t, leaf.IPAddresses)
	require.Empty(t, leaf.EmailAddresses)
	require.True(t, leaf.BasicConstraintsValid)
	require.False(t, leaf.IsCA, "leaf: cA=false")
	require.NotZero(t, leaf.KeyUsage&x509.KeyUsageDigitalSignature)
	require.Zero(t, leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign), "leaf: no keyCertSign/cRLSign")
	critical := false
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal(oidKeyUsage) {
			critical = ext.Critical
		}
	}
	require.True(t, critical, "key usage is critical")
	require.ElementsMatch(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage)
	for _, signer := range append(chain[1:], bundle.X509Authorities()...) {
		require.True(t, signer.IsCA, "signing certificates: cA=true")
		require.NotZero(t, signer.KeyUsage&x509.KeyUsageCertSign)
		for _, u := range signer.URIs {
			id, err := spiffeid.FromURI(u)
			require.NoError(t, err)
			require.Empty(t, id.Path(), "a signing certificate's SPIFFE ID has no path")
		}
	}
	id, _, err := x509svid.Verify(chain, bundle)
	require.NoError(t, err, "RFC 5280 path validation against the bundle")
	require.Equal(t, want, id)
}

// requireJWTSVID checks every JWT-SVID line of SPIFFE.md.
func requireJWTSVID(t *testing.T, token string, want spiffeid.ID, aud string, bundle *spiffebundle.Bundle) {
	t.Helper()
	parts := strings.Split(token, ".")
	require.Len(t, parts, 3, "compact JWS")
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	require.NoError(t, err)
	var hdr map[string]any
	require.NoError(t, json.Unmarshal(raw, &hdr))
	require.Equal(t, "ES256", hdr["alg"])
	if typ, ok := hdr["typ"]; ok {
		require.Contains(t, []any{"JWT", "JOSE"}, typ)
	}
	kid, _ := hdr["kid"].(string)
	require.NotEmpty(t, kid)
	_, ok := bundle.FindJWTAuthority(kid)
	require.True(t, ok, "kid names a key of the bundle")
	svid, err := jwtsvid.ParseAndValidate(token, bundle, []string{aud})
	require.NoError(t, err)
	require.Equal(t, want, svid.ID)
	require.Equal(t, []string{aud}, svid.Audience)
	require.False(t, svid.Expiry.IsZero())
}

func TestIssuedSVIDsMeetSPIFFE(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	ctx := context.Background()
	agent, err := s.AttestJoinToken(t, s.NewToken(t, ""))
	require.NoError(t, err)
	requireX509SVID(t, agent.SVID.Certificates, agent.ID, nil, agent.Bundle)

	created, err := s.Admin(t).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{{
		SpiffeId: "spiffe://example.org/ns/shop/sa/web", ParentId: agent.ID.String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:1000"}}, DnsNames: []string{"web.shop.svc", "web.example.org"},
	}}})
	require.NoError(t, err)
	entry := created.GetEntries()[0]
	want := spiffeid.RequireFromString(entry.GetSpiffeId())

	key := harness.NewKey(t)
	resp, err := agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{
		EntryId: entry.GetId(), Csr: harness.CSR(t, key, []string{want.String()}, entry.GetDnsNames()),
	}}})
	require.NoError(t, err)
	require.Empty(t, resp.GetResults()[0].GetError())
	chain := parseChain(t, resp.GetResults()[0].GetCertChain())
	requireX509SVID(t, chain, want, entry.GetDnsNames(), s.Bundle(t))
	require.True(t, key.PublicKey.Equal(chain[0].PublicKey), "the CSR's key is certified")

	jwt, err := agent.Node.NewJWTSVID(ctx, &tallyv1.NewJWTSVIDRequest{EntryId: entry.GetId(), Audience: []string{"orders"}})
	require.NoError(t, err)
	requireJWTSVID(t, jwt.GetToken(), want, "orders", s.Bundle(t))

	minted, err := s.Admin(t).MintX509SVID(ctx, &tallyv1.MintX509SVIDRequest{
		SpiffeId: "spiffe://example.org/minted", Csr: harness.CSR(t, key, []string{"spiffe://example.org/minted"}, nil),
	})
	require.NoError(t, err)
	requireX509SVID(t, parseChain(t, minted.GetCertChain()), spiffeid.RequireFromString("spiffe://example.org/minted"), nil, s.Bundle(t))
}

func TestLongTrustDomainAndID(t *testing.T) {
	t.Parallel()
	s := harness.NewServer(t)
	td := strings.Repeat("a", 251) + ".org" // 255 bytes
	s.TrustDomain = spiffeid.RequireTrustDomainFromString(td)
	s.Start(t)
	id := "spiffe://" + td + "/" + strings.Repeat("p", 2048-len("spiffe://"+td+"/"))
	require.Len(t, id, 2048)
	key := harness.NewKey(t)
	resp, err := s.Admin(t).MintX509SVID(context.Background(), &tallyv1.MintX509SVIDRequest{SpiffeId: id, Csr: harness.CSR(t, key, []string{id}, nil)})
	require.NoError(t, err)
	requireX509SVID(t, parseChain(t, resp.GetCertChain()), spiffeid.RequireFromString(id), nil, s.Bundle(t))
}

func TestBundleEndpoint(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	ctx := context.Background()
	local := s.Bundle(t)

	// https_spiffe profile: the endpoint authenticates with the server's
	// SVID, verified against the bundle we already trust.
	fetched, err := federation.FetchBundle(ctx, s.TrustDomain, "https://"+s.HTTPAddr+"/",
		federation.WithSPIFFEAuth(local, s.ServerID()))
	require.NoError(t, err)
	require.True(t, fetched.Equal(local))

	raw, err := fetched.Marshal()
	require.NoError(t, err)
	var doc struct {
		Keys        []map[string]any `json:"keys"`
		Sequence    *uint64          `json:"spiffe_sequence"`
		RefreshHint *int64           `json:"spiffe_refresh_hint"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.NotNil(t, doc.Keys)
	require.NotNil(t, doc.Sequence)
	require.NotNil(t, doc.RefreshHint)
	require.Positive(t, *doc.RefreshHint)
	var x509Keys, jwtKeys int
	for _, k := range doc.Keys {
		switch k["use"] {
		case "x509-svid":
			x509Keys++
			require.NotContains(t, k, "kid", "x509 authorities have no kid")
			require.Len(t, k["x5c"], 1, "x5c has exactly one CA certificate")
		case "jwt-svid":
			jwtKeys++
			require.NotEmpty(t, k["kid"])
		default:
			t.Fatalf("unexpected use %v", k["use"])
		}
	}
	require.Positive(t, x509Keys)
	require.Positive(t, jwtKeys)

	// OIDC discovery for JWT-SVID consumers.
	client := harness.HTTPSClient(t, local, s.ServerID())
	var disc map[string]any
	harness.GetJSON(t, client, "https://"+s.HTTPAddr+"/.well-known/openid-configuration", &disc)
	require.Equal(t, "https://"+s.HTTPAddr, disc["issuer"])
	require.Equal(t, "https://"+s.HTTPAddr+"/keys", disc["jwks_uri"])
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	harness.GetJSON(t, client, "https://"+s.HTTPAddr+"/keys", &jwks)
	require.Len(t, jwks.Keys, len(local.JWTAuthorities()))
	for _, k := range jwks.Keys {
		_, ok := local.FindJWTAuthority(k["kid"].(string))
		require.True(t, ok)
	}
}

func parseChain(t *testing.T, ders [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		require.NoError(t, err)
		out = append(out, c)
	}
	return out
}
