package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestX509SVIDConformance checks every X509-SVID line of SPIFFE.md on what
// the authority issues, for each key type it accepts.
func TestX509SVIDConformance(t *testing.T) {
	e := newTestEnv(t, nil)
	id := mustID(t, "spiffe://example.org/ns/default/sa/web")

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)

	for _, tc := range []struct {
		name      string
		key       crypto.Signer
		wantUsage x509.KeyUsage
	}{
		{"p256", newKey(t), x509.KeyUsageDigitalSignature},
		{"p384", p384, x509.KeyUsageDigitalSignature},
		{"ed25519", edKey, x509.KeyUsageDigitalSignature},
		{"rsa2048", rsaKey, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := e.clock.Now()
			chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{
				PublicKey: tc.key.Public(),
				ID:        id,
				DNSNames:  []string{"web.default.svc", "web"},
			})
			require.NoError(t, err)
			require.Len(t, chain, 1, "self-signed mode: the CA is the trust anchor, not sent")
			leaf := chain[0]

			// Exactly one URI SAN, the ID; DNS SANs allowed.
			require.Len(t, leaf.URIs, 1)
			assert.Equal(t, id.String(), leaf.URIs[0].String())
			assert.Equal(t, []string{"web.default.svc", "web"}, leaf.DNSNames)
			assert.Empty(t, leaf.EmailAddresses)
			assert.Empty(t, leaf.IPAddresses)
			assert.Equal(t, "web.default.svc", leaf.Subject.CommonName)
			assert.Equal(t, []string{"Tally"}, leaf.Subject.Organization)

			// cA=false; key usage present, critical, digitalSignature, no keyCertSign/cRLSign.
			assert.True(t, leaf.BasicConstraintsValid)
			assert.False(t, leaf.IsCA)
			assert.Equal(t, tc.wantUsage, leaf.KeyUsage)
			assert.True(t, extensionCritical(t, leaf, asn1.ObjectIdentifier{2, 5, 29, 15}), "key usage must be critical")

			// EKU has both serverAuth and clientAuth.
			assert.ElementsMatch(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage)

			// Validity: backdated 10s, default TTL 1h.
			assert.WithinDuration(t, now.Add(-10*time.Second), leaf.NotBefore, 0)
			assert.WithinDuration(t, now.Add(time.Hour), leaf.NotAfter, 0)
			assert.Positive(t, leaf.SerialNumber.Sign())

			// go-spiffe parses it as an X509-SVID with the workload key ...
			keyDER, err := x509.MarshalPKCS8PrivateKey(tc.key)
			require.NoError(t, err)
			svid, err := x509svid.ParseRaw(concatDER(chain), keyDER)
			require.NoError(t, err)
			assert.Equal(t, id, svid.ID)

			// ... and it validates by path validation against the bundle.
			gotID, chains, err := x509svid.Verify(chain, e.a.Bundle(), x509svid.WithTime(now))
			require.NoError(t, err)
			assert.Equal(t, id, gotID)
			require.Len(t, chains, 1)

			// The signing certificate: cA=true, keyCertSign, SPIFFE ID with no path.
			ca := chains[0][len(chains[0])-1]
			checkSigningCert(t, ca)
		})
	}
}

func TestX509SVIDRandomSerials(t *testing.T) {
	e := newTestEnv(t, nil)
	key := newKey(t)
	seen := map[string]bool{}
	for range 20 {
		chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: mustID(t, "spiffe://example.org/w")})
		require.NoError(t, err)
		s := chain[0].SerialNumber.String()
		require.False(t, seen[s], "serial %s repeated", s)
		require.Greater(t, chain[0].SerialNumber.BitLen(), 64, "serial should carry at least 64 random bits")
		seen[s] = true
	}
}

func TestX509SVIDTTL(t *testing.T) {
	e := newTestEnv(t, nil) // CATTL 24h: TTL up to 4h
	key := newKey(t)
	id := mustID(t, "spiffe://example.org/w")
	now := e.clock.Now()

	chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: id, TTL: 4 * time.Hour})
	require.NoError(t, err)
	assert.WithinDuration(t, now.Add(4*time.Hour), chain[0].NotAfter, 0)

	for _, ttl := range []time.Duration{-time.Second, 4*time.Hour + time.Second} {
		_, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: id, TTL: ttl})
		require.ErrorIs(t, err, ErrInvalidParams)
		assert.Contains(t, err.Error(), "out of range")
	}

	// Without rotation running, a leaf is capped at its CA's NotAfter.
	ca := caOf(t, e.a)
	e.clock.SetTime(ca.NotAfter.Add(-30 * time.Minute))
	chain, err = e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.NoError(t, err)
	assert.WithinDuration(t, ca.NotAfter, chain[0].NotAfter, 0)

	// Past it, nothing is signed.
	e.clock.SetTime(ca.NotAfter)
	_, err = e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.ErrorIs(t, err, ErrNotReady)
}

func TestX509SVIDBadParams(t *testing.T) {
	e := newTestEnv(t, nil)
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	good := newKey(t).Public()
	id := mustID(t, "spiffe://example.org/w")
	for _, tc := range []struct {
		name string
		p    X509SVIDParams
		want string
	}{
		{"no key", X509SVIDParams{ID: id}, "public key required"},
		{"small rsa", X509SVIDParams{PublicKey: smallRSA.Public(), ID: id}, "rsa key of 1024 bits"},
		{"no id", X509SVIDParams{PublicKey: good}, "spiffe id required"},
		{"other trust domain", X509SVIDParams{PublicKey: good, ID: mustID(t, "spiffe://other.org/w")}, "not in trust domain"},
		{"trust domain id", X509SVIDParams{PublicKey: good, ID: testTD.ID()}, "has no path"},
		{"bad dns", X509SVIDParams{PublicKey: good, ID: id, DNSNames: []string{"a..b"}}, "invalid dns name"},
		{"empty dns", X509SVIDParams{PublicKey: good, ID: id, DNSNames: []string{""}}, "invalid dns name"},
		// One DNS rule for the CA and for entries (internal/dnsname): no underscores.
		{"underscore", X509SVIDParams{PublicKey: good, ID: id, DNSNames: []string{"web_1.example.org"}}, "invalid dns name"},
		{"bare wildcard", X509SVIDParams{PublicKey: good, ID: id, DNSNames: []string{"*"}}, "invalid dns name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.a.SignX509SVID(context.Background(), tc.p)
			require.ErrorIs(t, err, ErrInvalidParams)
			assert.Contains(t, err.Error(), tc.want)
			assert.Regexp(t, `^ca: `, err.Error())
		})
	}
}

// checkSigningCert checks the SPIFFE.md lines on signing certificates and the
// authority's own CA profile.
func checkSigningCert(t *testing.T, ca *x509.Certificate) {
	t.Helper()
	assert.True(t, ca.BasicConstraintsValid)
	assert.True(t, ca.IsCA)
	assert.Equal(t, x509.KeyUsageCertSign|x509.KeyUsageCRLSign, ca.KeyUsage)
	require.Len(t, ca.URIs, 1)
	caID, err := spiffeid.FromURI(ca.URIs[0])
	require.NoError(t, err)
	assert.Equal(t, "", caID.Path())
	assert.Equal(t, testTD, caID.TrustDomain())
	assert.Equal(t, []string{"Tally"}, ca.Subject.Organization)
}

func extensionCritical(t *testing.T, c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	t.Helper()
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oid) {
			return ext.Critical
		}
	}
	t.Fatalf("extension %s missing", oid)
	return false
}

func concatDER(chain []*x509.Certificate) []byte {
	var out []byte
	for _, c := range chain {
		out = append(out, c.Raw...)
	}
	return out
}

// caOf returns the active X.509 CA certificate.
func caOf(t *testing.T, a *Authority) *x509.Certificate {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	active, _ := find(a.st.x509)
	require.NotNil(t, active)
	return active.cert
}

// TestLongIDs: IDs of 2048 bytes in a trust domain of 255 bytes work.
func TestLongIDs(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString(strings.Repeat("a", 251) + ".org")
	e := newTestEnv(t, func(c *Config) { c.TrustDomain = td })
	prefix := "spiffe://" + td.Name() + "/"
	id := mustID(t, prefix+strings.Repeat("b", 2048-len(prefix)))
	require.Len(t, id.String(), 2048)

	key := newKey(t)
	chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.NoError(t, err)
	gotID, _, err := x509svid.Verify(chain, e.a.Bundle(), x509svid.WithTime(e.clock.Now()))
	require.NoError(t, err)
	assert.Equal(t, id, gotID)

	token, _, err := e.a.SignJWTSVID(context.Background(), JWTSVIDParams{ID: id, Audience: []string{"x"}})
	require.NoError(t, err)
	svid, err := jwtsvid.ParseAndValidate(token, e.a.Bundle(), []string{"x"})
	require.NoError(t, err)
	assert.Equal(t, id, svid.ID)
}
