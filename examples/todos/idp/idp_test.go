package idp

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testClientID = "todos-app"
	// Any port matches the registered http://127.0.0.1/callback; nothing
	// listens on it, Login intercepts the redirect.
	testRedirectURI = "http://127.0.0.1:1/callback"
)

// serve starts a Provider for cfg (Issuer filled in) on a loopback port and
// returns its issuer.
func serve(t *testing.T, cfg Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.Issuer = "http://" + lis.Addr().String()
	p, err := New(cfg)
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(p.Handler())
	srv.Listener.Close()
	srv.Listener = lis
	srv.Start()
	t.Cleanup(srv.Close)
	return cfg.Issuer
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, url)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

func TestDiscovery(t *testing.T) {
	issuer := serve(t, Config{ClientID: testClientID})

	var disc struct {
		Issuer                string   `json:"issuer"`
		JWKSURI               string   `json:"jwks_uri"`
		AuthorizationEndpoint string   `json:"authorization_endpoint"`
		TokenEndpoint         string   `json:"token_endpoint"`
		CodeChallengeMethods  []string `json:"code_challenge_methods_supported"`
		IDTokenAlgs           []string `json:"id_token_signing_alg_values_supported"`
		Claims                []string `json:"claims_supported"`
	}
	getJSON(t, issuer+"/.well-known/openid-configuration", &disc)
	assert.Equal(t, issuer, disc.Issuer)
	assert.Equal(t, issuer+"/authorize", disc.AuthorizationEndpoint)
	assert.Equal(t, issuer+"/oauth/token", disc.TokenEndpoint)
	assert.Contains(t, disc.CodeChallengeMethods, "S256")
	assert.Equal(t, []string{"RS256"}, disc.IDTokenAlgs)
	assert.Contains(t, disc.Claims, ClaimRoles)

	var jwks struct {
		Keys []struct {
			Kid, Alg, Use, Kty string
		} `json:"keys"`
	}
	getJSON(t, disc.JWKSURI, &jwks)
	require.Len(t, jwks.Keys, 1)
	assert.NotEmpty(t, jwks.Keys[0].Kid)
	assert.Equal(t, "RS256", jwks.Keys[0].Alg)
	assert.Equal(t, "sig", jwks.Keys[0].Use)
	assert.Equal(t, "RSA", jwks.Keys[0].Kty)
}

// claims are the token claims the demo relies on.
type claims struct {
	Subject       string   `json:"sub"`
	Email         string   `json:"email"`
	EmailVerified bool     `json:"email_verified"`
	Roles         []string `json:"roles"`
	IssuedAt      int64    `json:"iat"`
	Expiry        int64    `json:"exp"`
}

func TestLogin(t *testing.T) {
	const ttl = 7 * time.Minute
	issuer := serve(t, Config{ClientID: testClientID, TTL: ttl})
	ctx := t.Context()
	provider, err := oidc.NewProvider(ctx, issuer)
	require.NoError(t, err)
	verifier := provider.Verifier(&oidc.Config{ClientID: testClientID})

	tests := []struct {
		name, username, password string
		wantSub, wantEmail       string
	}{
		{name: "alice by id", username: "alice", password: "alice-password", wantSub: "alice", wantEmail: "alice@example.com"},
		{name: "bob by email", username: "bob@example.com", password: "bob-password", wantSub: "bob", wantEmail: "bob@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			toks, err := Login(ctx, &http.Client{}, issuer, testClientID, testRedirectURI, tt.username, tt.password)
			require.NoError(t, err)
			assert.WithinRange(t, toks.Expiry, before.Add(ttl-2*time.Second), time.Now().Add(ttl+2*time.Second))

			for kind, raw := range map[string]string{"id token": toks.IDToken, "access token": toks.AccessToken} {
				tok, err := verifier.Verify(ctx, raw)
				require.NoError(t, err, kind)
				assert.Equal(t, issuer, tok.Issuer, kind)
				assert.Equal(t, []string{testClientID}, tok.Audience, kind)
				var c claims
				require.NoError(t, tok.Claims(&c), kind)
				// exp and iat are taken a moment apart, in whole seconds.
				assert.InDelta(t, int64(ttl/time.Second), c.Expiry-c.IssuedAt, 1, kind)
				c.IssuedAt, c.Expiry = 0, 0
				assert.Equal(t, claims{
					Subject:       tt.wantSub,
					Email:         tt.wantEmail,
					EmailVerified: true,
					Roles:         []string{"user"},
				}, c, kind)
			}
			assert.NotEqual(t, toks.IDToken, toks.AccessToken)
		})
	}
}

func TestLoginRefused(t *testing.T) {
	issuer := serve(t, Config{ClientID: testClientID})

	tests := []struct {
		name                                      string
		clientID, redirectURI, username, password string
		wantCredentials                           bool
	}{
		{name: "wrong password", username: "bob", password: "alice-password", wantCredentials: true},
		{name: "unknown user", username: "carol", password: "carol-password", wantCredentials: true},
		{name: "empty password", username: "alice", password: "", wantCredentials: true},
		{name: "unknown client", clientID: "other-app", username: "alice", password: "alice-password"},
		{name: "unregistered redirect uri", redirectURI: "http://127.0.0.1:1/elsewhere", username: "alice", password: "alice-password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientID, redirectURI := testClientID, testRedirectURI
			if tt.clientID != "" {
				clientID = tt.clientID
			}
			if tt.redirectURI != "" {
				redirectURI = tt.redirectURI
			}
			toks, err := Login(t.Context(), &http.Client{}, issuer, clientID, redirectURI, tt.username, tt.password)
			require.Error(t, err)
			assert.Equal(t, Tokens{}, toks)
			assert.Equal(t, tt.wantCredentials, errors.Is(err, ErrInvalidCredentials), "%v", err)
		})
	}
}

// TestAudience: the tokens are for the configured client only.
func TestAudience(t *testing.T) {
	issuer := serve(t, Config{ClientID: testClientID})
	ctx := t.Context()
	toks, err := Login(ctx, nil, issuer, testClientID, testRedirectURI, "alice", "alice-password")
	require.NoError(t, err)
	provider, err := oidc.NewProvider(ctx, issuer)
	require.NoError(t, err)
	other := provider.Verifier(&oidc.Config{ClientID: "reminders-app"})
	for _, raw := range []string{toks.IDToken, toks.AccessToken} {
		_, err := other.Verify(ctx, raw)
		assert.ErrorContains(t, err, "audience")
	}
}

// TestKeyPerProvider: a token does not verify against another provider's
// keys, even one at the same issuer.
func TestKeyPerProvider(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	issuer := "http://" + lis.Addr().String()
	first, err := New(Config{Issuer: issuer, ClientID: testClientID})
	require.NoError(t, err)
	second, err := New(Config{Issuer: issuer, ClientID: testClientID})
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(first.Handler())
	srv.Listener.Close()
	srv.Listener = lis
	srv.Start()
	defer srv.Close()

	ctx := t.Context()
	toks, err := Login(ctx, nil, issuer, testClientID, testRedirectURI, "alice", "alice-password")
	require.NoError(t, err)
	keys := httptest.NewServer(second.Handler())
	defer keys.Close()
	verifier := oidc.NewVerifier(issuer, oidc.NewRemoteKeySet(ctx, keys.URL+"/keys"), &oidc.Config{ClientID: testClientID})
	_, err = verifier.Verify(ctx, toks.AccessToken)
	assert.ErrorContains(t, err, "signature")
}

func TestNewRefuses(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no issuer", cfg: Config{ClientID: testClientID}},
		{name: "relative issuer", cfg: Config{Issuer: "/idp", ClientID: testClientID}},
		{name: "http not on loopback", cfg: Config{Issuer: "http://idp.example.com", ClientID: testClientID}},
		{name: "issuer with path", cfg: Config{Issuer: "https://idp.example.com/realm", ClientID: testClientID}},
		{name: "ftp issuer", cfg: Config{Issuer: "ftp://127.0.0.1", ClientID: testClientID}},
		{name: "no client id", cfg: Config{Issuer: "https://idp.example.com"}},
		{name: "negative ttl", cfg: Config{Issuer: "https://idp.example.com", ClientID: testClientID, TTL: -time.Minute}},
		{name: "user without password", cfg: Config{Issuer: "https://idp.example.com", ClientID: testClientID,
			Users: []User{{ID: "carol", Email: "carol@example.com"}}}},
		{name: "email shared", cfg: Config{Issuer: "https://idp.example.com", ClientID: testClientID,
			Users: []User{{ID: "a", Email: "x@example.com", Password: "p"}, {ID: "b", Email: "x@example.com", Password: "q"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			assert.ErrorContains(t, err, "idp: ")
		})
	}
	for _, issuer := range []string{"https://idp.example.com", "http://127.0.0.1:9998", "http://localhost:9998", "http://[::1]:9998"} {
		_, err := New(Config{Issuer: issuer, ClientID: testClientID})
		assert.NoError(t, err, issuer)
	}
}
