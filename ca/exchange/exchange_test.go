package exchange

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca"
)

// The story's hop: shares exchanges Bob's ID token for a JWT-SVID to call
// todos on Bob's behalf.
func TestUserTokenBecomesJWTSVIDCarryingTheUser(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, alg := range []jose.SignatureAlgorithm{jose.RS256, jose.ES256} {
		t.Run(string(alg), func(t *testing.T) {
			kid := map[jose.SignatureAlgorithm]string{jose.RS256: "rsa-1", jose.ES256: "ec-1"}[alg]
			user := f.idp.userClaims("bob")
			resp, err := f.exchange(shares, Request{SubjectToken: f.idp.sign(t, alg, kid, user), SubjectTokenType: TypeIDToken,
				Audience: []string{todos.String()}, Scope: "todos.read"})
			require.NoError(t, err)
			assert.Equal(t, TypeJWT, resp.IssuedTokenType)
			assert.Equal(t, "N_A", resp.TokenType)
			assert.Equal(t, "todos.read", resp.Scope)
			assert.InDelta(t, 300, resp.ExpiresIn, 1)

			// go-spiffe accepts it unchanged, as todos would.
			svid, err := jwtsvid.ParseAndValidate(resp.AccessToken, f.a.Bundle(), []string{todos.String()})
			require.NoError(t, err)
			assert.Equal(t, shares, svid.ID)
			c := payload(t, resp.AccessToken)
			assert.Equal(t, tallyIssuer, c["iss"])
			assert.Equal(t, map[string]any{"iss": f.idp.url(), "sub": "bob", "email": "bob@example.com", "roles": []any{"user"}}, c["usr"],
				"only the claims the rule passes")
			assert.Equal(t, map[string]any{"sub": shares.String()}, c["act"])
			assert.NotEmpty(t, c["txn"])
			assert.NotEmpty(t, c["jti"])
			assert.Equal(t, "JWT", header(t, resp.AccessToken)["typ"])
		})
	}
}

// The next hop: todos exchanges the token it received; the user and the txn
// stay, the chain grows, the scope cannot widen.
func TestChainKeepsUserAndTxnAndNeverWidens(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	first, err := f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken,
		Audience: []string{todos.String()}})
	require.NoError(t, err)
	assert.Equal(t, "todos.read", first.Scope, "no scope requested: every allowed one")

	// todos's rule allows todos.write, but the subject token only has todos.read.
	_, err = f.exchange(todos, Request{SubjectToken: first.AccessToken, SubjectTokenType: TypeJWT,
		Audience: []string{reminders.String()}, Scope: "todos.read todos.write"})
	requireCode(t, err, CodeInvalidScope, "todos-onward")
	assert.Contains(t, err.Error(), "wider than the subject token's scope")

	second, err := f.exchange(todos, Request{SubjectToken: first.AccessToken, SubjectTokenType: TypeJWT,
		Audience: []string{reminders.String()}})
	require.NoError(t, err)
	assert.Equal(t, "todos.read", second.Scope)
	a, b := payload(t, first.AccessToken), payload(t, second.AccessToken)
	assert.Equal(t, a["txn"], b["txn"], "txn never changes along a chain")
	assert.Equal(t, map[string]any{"iss": f.idp.url(), "sub": "bob", "email": "bob@example.com"}, b["usr"],
		"same user; todos-onward passes email only")
	assert.Equal(t, map[string]any{"sub": todos.String(), "act": map[string]any{"sub": shares.String()}}, b["act"])
	assert.Equal(t, todos.String(), b["sub"])
	assert.LessOrEqual(t, b["exp"], a["exp"], "never past the subject token's expiry")

	// A token altered on the way (another txn, another user) no longer verifies.
	for field, value := range map[string]any{"txn": "other-txn", "usr": map[string]any{"iss": f.idp.url(), "sub": "alice"}} {
		forged := tamper(t, first.AccessToken, field, value)
		_, err := f.exchange(todos, Request{SubjectToken: forged, SubjectTokenType: TypeJWT, Audience: []string{reminders.String()}})
		requireCode(t, err, CodeInvalidGrant, "")
		assert.Contains(t, err.Error(), "signature does not verify", field)
	}
}

func TestTxnTokens(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	resp, err := f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeAccess,
		RequestedTokenType: TypeTxnToken, Audience: []string{td.Name()}, Scope: "todos.read"})
	require.NoError(t, err)
	assert.Equal(t, TypeTxnToken, resp.IssuedTokenType)
	assert.Equal(t, "N_A", resp.TokenType)
	h := header(t, resp.AccessToken)
	assert.Equal(t, "txntoken+jwt", h["typ"])
	assert.Equal(t, "ES256", h["alg"])
	_, ok := f.a.Bundle().FindJWTAuthority(h["kid"].(string))
	assert.True(t, ok, "kid names a bundle key")
	c := payload(t, resp.AccessToken)
	assert.Equal(t, "spiffe://example.org", c["aud"])
	assert.Equal(t, "bob", c["sub"])
	assert.Equal(t, shares.String(), c["req_wl"])
	assert.Equal(t, "todos.read", c["scope"])
	assert.Equal(t, map[string]any{"usr": map[string]any{"iss": f.idp.url(), "sub": "bob", "email": "bob@example.com", "roles": []any{"user"}}}, c["tctx"])
	assert.Equal(t, map[string]any{"authn": "x509-svid", "req_ip": "127.0.0.1"}, c["rctx"])
	for _, k := range []string{"iat", "exp", "txn"} {
		assert.NotEmpty(t, c[k], k)
	}
	assert.LessOrEqual(t, c["exp"].(float64)-c["iat"].(float64), 300.0)

	// Replacement: same txn, sub, aud, tctx; the new requesting workload.
	repl, err := f.exchange(todos, Request{SubjectToken: resp.AccessToken, SubjectTokenType: TypeTxnToken, RequestedTokenType: TypeTxnToken})
	require.NoError(t, err)
	r := payload(t, repl.AccessToken)
	for _, k := range []string{"txn", "sub", "aud"} {
		assert.Equal(t, c[k], r[k], k)
	}
	assert.Equal(t, todos.String(), r["req_wl"])

	// A Txn-Token, addressed to the whole trust domain, is never turned into
	// a JWT-SVID for a service.
	_, err = f.exchange(todos, Request{SubjectToken: resp.AccessToken, SubjectTokenType: TypeTxnToken, Audience: []string{reminders.String()}})
	requireCode(t, err, CodeInvalidGrant, "")
	// Its type must be named as what it is.
	_, err = f.exchange(todos, Request{SubjectToken: resp.AccessToken, SubjectTokenType: TypeJWT, RequestedTokenType: TypeTxnToken})
	requireCode(t, err, CodeInvalidRequest, "")
	_, err = f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken,
		RequestedTokenType: TypeTxnToken, Audience: []string{todos.String()}})
	requireCode(t, err, CodeInvalidTarget, "")
}

// Every bad input of the issue: an RFC 6749 code, nothing issued, and the
// service still serves a good request afterwards.
func TestBadInputIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	other := newAuthority(t) // same trust domain, keys the bundle does not hold (a revoked key is one of them)
	bob := f.idp.userClaims("bob")
	pubDER, err := x509.MarshalPKIXPublicKey(f.idp.rsa.Public())
	require.NoError(t, err)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs256 := rawToken(t, map[string]any{"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, bob, func(in []byte) []byte {
		m := hmac.New(sha256.New, pubPEM)
		m.Write(in)
		return m.Sum(nil)
	})
	none := rawToken(t, map[string]any{"alg": "none", "typ": "JWT"}, bob, func([]byte) []byte { return nil })
	with := func(k string, v any) map[string]any {
		c := f.idp.userClaims("bob")
		c[k] = v
		return c
	}
	issuedToShares, err := f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err)
	foreign, _, err := other.SignJWTSVID(context.Background(), ca.JWTSVIDParams{ID: shares, Audience: []string{todos.String()},
		Claims: map[string]any{"iss": tallyIssuer, "txn": "t", "usr": map[string]any{"iss": f.idp.url(), "sub": "bob"}, "act": map[string]any{"sub": shares.String()}}})
	require.NoError(t, err)
	plain, _, err := f.a.SignJWTSVID(context.Background(), ca.JWTSVIDParams{ID: shares, Audience: []string{todos.String()}, Claims: map[string]any{"iss": tallyIssuer}})
	require.NoError(t, err)
	idTok := func(c map[string]any) Request {
		return Request{SubjectToken: f.idp.sign(t, jose.RS256, "rsa-1", c), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}
	}

	for _, tc := range []struct {
		name   string
		caller string
		req    Request
		code   string
		rule   string
		says   string
	}{
		{"alg none", "shares", Request{SubjectToken: none, SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}, CodeInvalidGrant, "", "unsupported signature algorithm"},
		{"HS256 with the public key as secret", "shares", Request{SubjectToken: hs256, SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}, CodeInvalidGrant, "", "unsupported signature algorithm"},
		{"unknown kid", "shares", Request{SubjectToken: f.idp.sign(t, jose.RS256, "rsa-unknown", bob), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}, CodeInvalidGrant, "", "subject token"},
		{"wrong issuer", "shares", idTok(with("iss", "https://evil.example.com")), CodeInvalidGrant, "", "not trusted"},
		{"expired", "shares", idTok(with("exp", time.Now().Add(-time.Minute).Unix())), CodeInvalidGrant, "", "expired"},
		{"not yet valid", "shares", idTok(with("nbf", time.Now().Add(2*time.Minute).Unix())), CodeInvalidGrant, "", "not valid before"},
		{"wrong audience", "shares", idTok(with("aud", "another-app")), CodeInvalidGrant, "", "audience"},
		{"audience the rule does not list", "shares", Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{reminders.String()}}, CodeInvalidTarget, "shares-to-todos", "may not exchange for audience"},
		{"Tally token replayed by a workload it was not issued to", "reminders", Request{SubjectToken: issuedToShares.AccessToken, SubjectTokenType: TypeJWT, Audience: []string{todos.String()}}, CodeUnauthorizedClient, "", "no exchange rule"},
		{"Tally token replayed by a listed workload it was not issued to", "shares", Request{SubjectToken: issuedToShares.AccessToken, SubjectTokenType: TypeJWT, Audience: []string{todos.String()}}, CodeInvalidGrant, "", "not issued to spiffe://example.org/shares"},
		{"scope widening", "shares", Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}, Scope: "todos.read todos.admin"}, CodeInvalidScope, "shares-to-todos", "not allowed"},
		{"signed by a key not in the bundle (revoked)", "todos", Request{SubjectToken: foreign, SubjectTokenType: TypeJWT, Audience: []string{reminders.String()}}, CodeInvalidGrant, "", "not in the trust bundle"},
		{"a JWT-SVID without a user", "todos", Request{SubjectToken: plain, SubjectTokenType: TypeJWT, Audience: []string{reminders.String()}}, CodeInvalidGrant, "", "carries no user"},
		{"may_act names another actor", "shares", idTok(with("may_act", map[string]any{"sub": todos.String()})), CodeInvalidGrant, "", "may_act"},
		{"unknown grant_type", "shares", Request{GrantType: "password", SubjectToken: "x", SubjectTokenType: TypeIDToken}, CodeUnsupportedGrant, "", "not supported"},
		{"unknown requested_token_type", "shares", Request{SubjectToken: "x", SubjectTokenType: TypeIDToken, RequestedTokenType: "urn:x:saml2"}, CodeInvalidRequest, "", "requested_token_type"},
		{"unknown subject_token_type", "shares", Request{SubjectToken: "x", SubjectTokenType: "urn:x:saml2"}, CodeInvalidRequest, "", "subject_token_type"},
		{"missing subject_token", "shares", Request{SubjectTokenType: TypeIDToken}, CodeInvalidRequest, "", "subject_token is required"},
		{"missing subject_token_type", "shares", Request{SubjectToken: "x"}, CodeInvalidRequest, "", "subject_token_type is required"},
		{"missing audience", "shares", Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken}, CodeInvalidRequest, "", "audience is required"},
		{"two audiences", "shares", Request{SubjectToken: "x", SubjectTokenType: TypeIDToken, Audience: []string{"a", "b"}}, CodeInvalidTarget, "", "one audience"},
		{"actor_token", "shares", Request{SubjectToken: "x", SubjectTokenType: TypeIDToken, ActorToken: "y"}, CodeInvalidRequest, "", "actor_token"},
		{"oversized token", "shares", Request{SubjectToken: strings.Repeat("a", 17<<10), SubjectTokenType: TypeIDToken}, CodeInvalidRequest, "", "longer than"},
		{"garbage token", "shares", Request{SubjectToken: "not.a.jwt", SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}, CodeInvalidGrant, "", "subject token"},
		{"caller the policy does not list", "stranger", Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}, CodeUnauthorizedClient, "", "no exchange rule lists spiffe://example.org/stranger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := map[string]spiffeid.ID{"shares": shares, "todos": todos, "reminders": reminders, "stranger": stranger}[tc.caller]
			resp, err := f.exchange(id, tc.req)
			requireCode(t, err, tc.code, tc.rule)
			assert.Contains(t, err.Error(), tc.says)
			assert.Empty(t, resp.AccessToken, "nothing issued")
			if tc.req.SubjectToken != "" && len(tc.req.SubjectToken) > 8 {
				assert.NotContains(t, f.log.String(), tc.req.SubjectToken, "a token never reaches the log")
			}
		})
	}
	_, err = f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err, "the service keeps serving")
	assert.NotContains(t, f.log.String(), issuedToShares.AccessToken)
}

// An issuer that is down gets a clear error within the issuer timeout, not
// a hang; requests in the next seconds fail at once.
func TestIssuerDown(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = lis.Close() }) // accepts nothing: connections hang in the backlog
	url := "http://" + lis.Addr().String()
	f := newFixture(t, func(p *Policy) {
		p.Issuers = append(p.Issuers, Issuer{URL: url, Audiences: []string{clientID}})
		p.IssuerTimeout = 300 * time.Millisecond
	})
	c := f.idp.userClaims("bob")
	c["iss"] = url
	tok := f.idp.sign(t, jose.RS256, "rsa-1", c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a guard, not a measurement
	defer cancel()
	for range 2 {
		_, err := f.svc.Exchange(ctx, Caller{ID: shares, Authn: AuthnX509}, Request{GrantType: GrantType, SubjectToken: tok, SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
		requireCode(t, err, CodeUnavailable, "")
		assert.Contains(t, err.Error(), "OIDC discovery at "+url+" failed")
	}
	require.NoError(t, ctx.Err())
	_, err = f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err, "other issuers keep working")
}

func TestLifetimeNeverPastTheSubjectToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.idp.userClaims("bob")
	exp := time.Now().Add(90 * time.Second)
	c["exp"] = exp.Unix()
	resp, err := f.exchange(shares, Request{SubjectToken: f.idp.sign(t, jose.RS256, "rsa-1", c), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err)
	assert.LessOrEqual(t, int64(payload(t, resp.AccessToken)["exp"].(float64)), exp.Unix())
	assert.LessOrEqual(t, resp.ExpiresIn, int64(90))
}

func TestAuditLine(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tok := f.idp.token(t, "bob")
	resp, err := f.exchange(shares, Request{SubjectToken: tok, SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err)
	_, _ = f.exchange(shares, Request{SubjectToken: tok, SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}, Scope: "todos.write"})
	log := f.log.String()
	txn := payload(t, resp.AccessToken)["txn"].(string)
	for _, want := range []string{`"actor":"spiffe://example.org/shares"`, `"user_sub":"bob"`, `"user_iss":"` + f.idp.url() + `"`,
		`"audience":"spiffe://example.org/todos"`, `"scope":"todos.read"`, `"txn":"` + txn + `"`, `"result":"ok"`,
		`"rule":"shares-to-todos"`, `"result":"invalid_scope"`} {
		assert.Contains(t, log, want)
	}
	assert.NotContains(t, log, tok)
	assert.NotContains(t, log, resp.AccessToken)
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	good := testPolicy("https://idp.example.com")
	require.NoError(t, good.Validate(td))
	for name, edit := range map[string]func(*Policy){
		"ttl over 5m":         func(p *Policy) { p.TokenTTL = 6 * time.Minute },
		"http issuer":         func(p *Policy) { p.Issuers[0].URL = "http://idp.example.com" },
		"issuer no audiences": func(p *Policy) { p.Issuers[0].Audiences = nil },
		"rule without name":   func(p *Policy) { p.Rules[0].Name = "" },
		"duplicate rule":      func(p *Policy) { p.Rules[1].Name = p.Rules[0].Name },
		"actor not spiffe":    func(p *Policy) { p.Rules[0].Actors = []string{"shares"} },
		"actor other domain":  func(p *Policy) { p.Rules[0].Actors = []string{"spiffe://other.org/x"} },
		"no audiences":        func(p *Policy) { p.Rules[0].Audiences = nil },
		"bad scope":           func(p *Policy) { p.Rules[0].Scopes = []string{"a b"} },
		"reserved claim":      func(p *Policy) { p.Rules[0].Claims = []string{"sub"} },
		"control in name":     func(p *Policy) { p.Rules[0].Name = "a\nb" },
	} {
		p := testPolicy("https://idp.example.com")
		edit(&p)
		assert.Error(t, p.Validate(td), name)
	}
}

func requireCode(t *testing.T, err error, code, rule string) {
	t.Helper()
	require.Error(t, err)
	e := AsError(err)
	require.Equal(t, code, e.Code, err.Error())
	assert.Equal(t, rule, e.Rule, err.Error())
}

// tamper replaces one claim of a token and keeps its signature.
func tamper(t *testing.T, tok, claim string, value any) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	c := payload(t, tok)
	c[claim] = value
	forged := rawToken(t, header(t, tok), c, func([]byte) []byte { return nil })
	fp := strings.Split(forged, ".")
	return fp[0] + "." + fp[1] + "." + parts[2]
}

// A token signed by a key the issuer published after its JWKS was cached:
// go-oidc fetches the JWKS again for the unknown kid.
func TestIssuerKeyRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, err := f.exchange(shares, Request{SubjectToken: f.idp.token(t, "bob"), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err)
	before := f.idp.fetches()
	f.idp.rotate(t)
	_, err = f.exchange(shares, Request{SubjectToken: f.idp.sign(t, jose.RS256, "rsa-2", f.idp.userClaims("bob")), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err)
	assert.Greater(t, f.idp.fetches(), before, "the JWKS was fetched again")
	after := f.idp.fetches()
	_, err = f.exchange(shares, Request{SubjectToken: f.idp.sign(t, jose.RS256, "rsa-2", f.idp.userClaims("bob")), SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}})
	require.NoError(t, err)
	assert.Equal(t, after, f.idp.fetches(), "and cached again")
}
