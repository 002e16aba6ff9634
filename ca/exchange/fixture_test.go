package exchange

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store/badgerstore"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("example.org")
	shares    = spiffeid.RequireFromString("spiffe://example.org/shares")
	todos     = spiffeid.RequireFromString("spiffe://example.org/todos")
	reminders = spiffeid.RequireFromString("spiffe://example.org/reminders")
	stranger  = spiffeid.RequireFromString("spiffe://example.org/stranger")
)

const (
	tallyIssuer = "https://tally.example.org"
	clientID    = "todos-app"
)

// newAuthority is a real authority on a real badger store.
func newAuthority(t testing.TB) *ca.Authority {
	t.Helper()
	dir := t.TempDir()
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(dir, "store"), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	a, err := ca.New(context.Background(), ca.Config{TrustDomain: td, KeyDir: filepath.Join(dir, "keys"), Journal: st})
	require.NoError(t, err)
	return a
}

// idp is an OIDC issuer for the tests: discovery and a JWKS over HTTP on
// loopback, an RSA and an EC key, and tokens signed however a test needs
// (including the ways an attacker would sign them).
type idp struct {
	srv    *httptest.Server
	rsa    *rsa.PrivateKey
	ec     *ecdsa.PrivateKey
	mu     sync.Mutex
	fetch  int    // JWKS fetches
	rsaKid string // the RSA key's kid: rsa-1, rsa-2 after rotate
}

func newIDP(t testing.TB) *idp {
	t.Helper()
	p := &idp{rsaKid: "rsa-1"}
	var err error
	p.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	p.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": p.srv.URL, "jwks_uri": p.srv.URL + "/jwks", "authorization_endpoint": p.srv.URL + "/auth",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.fetch++
		p.mu.Unlock()
		p.mu.Lock()
		kid, pub := p.rsaKid, p.rsa.Public()
		p.mu.Unlock()
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: pub, KeyID: kid, Algorithm: "RS256", Use: "sig"},
			{Key: p.ec.Public(), KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
		}})
	})
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *idp) url() string { return p.srv.URL }

// rotate replaces the RSA key with a new one, kid rsa-2.
func (p *idp) rotate(t testing.TB) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rsa, p.rsaKid = key, "rsa-2"
}

func (p *idp) fetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fetch
}

// userClaims are Bob's claims as the issuer signs them.
func (p *idp) userClaims(sub string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": p.url(), "sub": sub, "aud": clientID, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"email": sub + "@example.com", "roles": []string{"user"}, "secret_claim": "not for services",
	}
}

// sign signs claims as alg with kid; alg RS256 and ES256 use the issuer's
// keys.
func (p *idp) sign(t testing.TB, alg jose.SignatureAlgorithm, kid string, claims map[string]any) string {
	t.Helper()
	var key any
	switch alg {
	case jose.RS256:
		p.mu.Lock()
		key = p.rsa
		p.mu.Unlock()
	case jose.ES256:
		key = p.ec
	default:
		t.Fatalf("sign %s: use a raw token", alg)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	require.NoError(t, err)
	payload, err := json.Marshal(claims)
	require.NoError(t, err)
	jws, err := s.Sign(payload)
	require.NoError(t, err)
	tok, err := jws.CompactSerialize()
	require.NoError(t, err)
	return tok
}

func (p *idp) token(t testing.TB, sub string) string {
	return p.sign(t, jose.RS256, "rsa-1", p.userClaims(sub))
}

// rawToken assembles header.payload.signature by hand (alg none, HS256).
func rawToken(t testing.TB, header, claims map[string]any, sign func(input []byte) []byte) string {
	t.Helper()
	h, err := json.Marshal(header)
	require.NoError(t, err)
	c, err := json.Marshal(claims)
	require.NoError(t, err)
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	return input + "." + enc.EncodeToString(sign([]byte(input)))
}

// testPolicy is the todos story's policy.
func testPolicy(issuer string) Policy {
	return Policy{
		Issuers: []Issuer{{URL: issuer, Audiences: []string{clientID}}},
		Rules: []Rule{
			{Name: "shares-to-todos", Actors: []string{shares.String()}, Audiences: []string{todos.String(), td.ID().String()},
				Scopes: []string{"todos.read"}, Claims: []string{"email", "roles"}},
			{Name: "todos-onward", Actors: []string{todos.String()}, Audiences: []string{reminders.String(), td.ID().String()},
				Scopes: []string{"todos.read", "todos.write"}, Claims: []string{"email"}},
		},
		IssuerTimeout: 2 * time.Second,
	}
}

// fixture is a Service on a real authority, with an issuer and a log.
type fixture struct {
	a   *ca.Authority
	idp *idp
	svc *Service
	log *bytes.Buffer
}

func newFixture(t testing.TB, edit ...func(*Policy)) *fixture {
	t.Helper()
	f := &fixture{a: newAuthority(t), idp: newIDP(t), log: &bytes.Buffer{}}
	pol := testPolicy(f.idp.url())
	for _, e := range edit {
		e(&pol)
	}
	var err error
	f.svc, err = New(Config{TrustDomain: td, Issuer: tallyIssuer, Signer: f.a, Policy: pol,
		Logger: slog.New(slog.NewJSONHandler(&lockedWriter{w: f.log}, nil))})
	require.NoError(t, err)
	return f
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (f *fixture) exchange(c spiffeid.ID, r Request) (Response, error) {
	if r.GrantType == "" {
		r.GrantType = GrantType
	}
	return f.svc.Exchange(context.Background(), Caller{ID: c, Authn: AuthnX509, Addr: "127.0.0.1:5555"}, r)
}

// svid is an X509-SVID for id from the authority, as a TLS certificate.
func (f *fixture) svid(t testing.TB, id spiffeid.ID) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	chain, err := f.a.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.NoError(t, err)
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// payload decodes a token's claims without verifying it.
func payload(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	return m
}

func header(t testing.TB, tok string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	return m
}

func roots(a *ca.Authority) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range a.Bundle().X509Authorities() {
		p.AddCert(c)
	}
	return p
}

var _ crypto.Signer = (*ecdsa.PrivateKey)(nil)
