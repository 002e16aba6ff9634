package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/delegation"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// exchangeConfig is a server config whose policy lets spiffe://example.org/web
// exchange users' tokens from issuer for todos.
func exchangeConfig(t *testing.T, issuer string) string {
	return harness.ConfigFile(t, fmt.Sprintf(`
exchange:
  issuers:
    - url: %s
      audiences: [todos-app]
  rules:
    - name: web-to-todos
      actors: [spiffe://example.org/web]
      audiences: [spiffe://example.org/todos, spiffe://example.org]
      scopes: [todos.read]
      claims: [email, roles]
`, issuer))
}

// The real binaries, a real OIDC provider: a workload exchanges Bob's token
// through its agent's socket and over mTLS at the server's endpoint.
func TestTokenExchange(t *testing.T) {
	t.Parallel()
	p := harness.StartIDP(t)
	s := harness.StartServer(t, "--config", exchangeConfig(t, p.Issuer))
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	bob := p.Login(t, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	todos := "spiffe://example.org/todos"

	// Through the agent socket: no certificate handling, no network path.
	c, err := delegation.NewClient(a.Addr())
	require.NoError(t, err)
	defer c.Close()
	var issued *delegation.Issued
	require.Eventually(t, func() bool { // the agent has synced its entries
		issued, err = c.ForIDToken(ctx, bob.IDToken, todos, "todos.read")
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "exchange through the agent: %v", err)
	svid, err := jwtsvid.ParseAndValidate(issued.Token, s.Bundle(t), []string{todos})
	require.NoError(t, err, "go-spiffe accepts the delegated token as a JWT-SVID")
	assert.Equal(t, "spiffe://example.org/web", svid.ID.String())
	usr := svid.Claims["usr"].(map[string]any)
	assert.Equal(t, "bob@example.com", usr["email"])
	assert.Equal(t, p.Issuer, usr["iss"])

	txn, err := c.Exchange(ctx, delegation.ExchangeRequest{SubjectToken: bob.AccessToken, SubjectTokenType: exchange.TypeAccess,
		RequestedTokenType: exchange.TypeTxnToken, Scope: []string{"todos.read"}})
	require.NoError(t, err)
	v, err := delegation.NewVerifier(s.Bundle(t), spiffeid.RequireFromString(todos))
	require.NoError(t, err)
	tok, err := v.VerifyTxnToken(txn.Token)
	require.NoError(t, err)
	assert.Equal(t, "bob@example.com", tok.User.Email)
	assert.Equal(t, "agent", tok.RequestContext["authn"])
	assert.Equal(t, a.ID(t).String(), tok.RequestContext["agent"])

	_, err = c.ForIDToken(ctx, bob.IDToken, todos, "todos.write")
	var ee *delegation.ExchangeError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, "invalid_scope", ee.Code)
	assert.Equal(t, "web-to-todos", ee.Rule)

	// Over HTTPS with the workload's X509-SVID.
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr())))
	require.NoError(t, err)
	defer src.Close()
	endpoint := "https://" + s.HTTPAddr + "/oauth2/token"
	form := url.Values{"grant_type": {exchange.GrantType}, "subject_token": {bob.IDToken},
		"subject_token_type": {exchange.TypeIDToken}, "audience": {todos}}
	mtls := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, s.Bundle(t), tlsconfig.AuthorizeID(s.ServerID()))}}
	status, body := postForm(t, mtls, endpoint, form)
	require.Equal(t, http.StatusOK, status, body)
	assert.Equal(t, "N_A", body["token_type"])
	assert.Equal(t, "todos.read", body["scope"])

	noSVID := harness.HTTPSClient(t, s.Bundle(t), s.ServerID())
	status, body = postForm(t, noSVID, endpoint, form)
	assert.Equal(t, http.StatusUnauthorized, status)
	assert.Equal(t, "invalid_client", body["error"])

	// The bundle and discovery documents still need no client certificate.
	var doc map[string]any
	harness.GetJSON(t, noSVID, "https://"+s.HTTPAddr+"/.well-known/openid-configuration", &doc)

	// tallyctl exchange, for debugging: the token on standard input.
	cmd := exec.Command(filepath.Join(harness.Binaries(t), "tallyctl"), "exchange", "--socket-path", a.Addr(),
		"--subject-token-file", "-", "--subject-token-type", "id_token", "--audience", todos, "-o", "json")
	cmd.Stdin = strings.NewReader(bob.IDToken)
	out, err := cmd.Output()
	require.NoError(t, err, "%s", out)
	var ctl map[string]any
	require.NoError(t, json.Unmarshal(out, &ctl))
	assert.Equal(t, exchange.TypeJWT, ctl["issued_token_type"])
	assert.Equal(t, "spiffe://example.org/web", ctl["claims"].(map[string]any)["sub"])

	var metrics string
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + s.HealthAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		metrics = string(raw)
		return strings.Contains(metrics, `tally_server_token_exchanges_total{result="invalid_scope",token_type="jwt"} 1`)
	}, 10*time.Second, 100*time.Millisecond, "every exchange is a metric")
	assert.Contains(t, metrics, `tally_server_token_exchanges_total{result="ok",token_type="txn_token"} 1`)
	assert.Contains(t, metrics, `tally_server_token_exchanges_total{result="invalid_client",token_type="jwt"} 1`)

	log := s.Log()
	for _, secret := range []string{bob.IDToken, bob.AccessToken, issued.Token, txn.Token} {
		assert.NotContains(t, log, secret, "a token never reaches the log")
	}
	assert.Contains(t, log, `"action":"token_exchange"`)
	assert.Contains(t, log, `"user_sub":"bob"`)
}

// Bad exchange policies are refused at start, naming what is wrong: an
// unknown key (strict like the top of the config) and a bad value.
func TestExchangePolicyRefusedAtStart(t *testing.T) {
	t.Parallel()
	for yaml, want := range map[string]string{
		"exchange:\n  rules:\n    - name: x\n      actor: [spiffe://example.org/a]\n":                      "field actor not found",
		"exchange:\n  rules:\n    - name: x\n      actors: [spiffe://other.org/a]\n      audiences: [a]\n": "not in trust domain example.org",
		"exchange:\n  token_ttl: 1h\n": "token_ttl 1h0m0s out of range",
		"exchange:\n  issuers:\n    - url: http://idp.example.com\n      audiences: [app]\n": "want https",
	} {
		a := newCfgAddrs(t)
		stderr, code := cfgRunToExit(t, "run", "--config", cfgWriteFile(t, "trust_domain: example.org\n"+a.yaml()+yaml))
		assert.NotEqual(t, 0, code)
		assert.Contains(t, stderr, want)
	}
}

func postForm(t *testing.T, c *http.Client, u string, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := c.Post(u, "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	defer resp.Body.Close()
	var body map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	return resp.StatusCode, body
}

// A Tally token signed by a JWT key that was then revoked is refused as a
// subject token: the exchange verifies against the bundle of the moment.
func TestExchangeRefusesARevokedKey(t *testing.T) {
	t.Parallel()
	p := harness.StartIDP(t)
	cfg := harness.ConfigFile(t, fmt.Sprintf(`
exchange:
  issuers:
    - url: %s
      audiences: [todos-app]
  rules:
    - name: web-onward
      actors: [spiffe://example.org/web]
      audiences: [spiffe://example.org/web, spiffe://example.org/todos]
`, p.Issuer))
	// ca_ttl 1m: the bundle's refresh hint is 6 s, so a prepared key may be
	// activated 12 s after it was published.
	s := harness.StartServer(t, "--config", cfg, "--ca-ttl", "1m")
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	bob := p.Login(t, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := delegation.NewClient(a.Addr())
	require.NoError(t, err)
	defer c.Close()

	_, stderr, err := s.Ctl("authority", "jwt", "prepare")
	require.NoError(t, err, stderr)
	// Until the prepared key may be activated, keep a fresh token signed by
	// the active one, addressed to the caller itself so it may continue
	// the chain.
	var held *delegation.Issued
	require.Eventually(t, func() bool {
		held, err = c.ForIDToken(ctx, bob.IDToken, "spiffe://example.org/web")
		if err != nil {
			return false
		}
		_, _, err = s.Ctl("authority", "jwt", "activate")
		return err == nil
	}, 60*time.Second, 500*time.Millisecond, "activate: %v", err)
	kid := jwtHeader(t, held.Token)["kid"].(string)
	_, stderr, err = s.Ctl("authority", "jwt", "revoke", kid, "--force")
	require.NoError(t, err, stderr)

	_, err = c.OnBehalfOf(ctx, &delegation.Token{Kind: delegation.JWTSVID, Raw: held.Token}, "spiffe://example.org/todos")
	var ee *delegation.ExchangeError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, "invalid_grant", ee.Code)
	assert.Contains(t, ee.Description, "not in the trust bundle (unknown or revoked)")

	fresh, err := c.ForIDToken(ctx, bob.IDToken, "spiffe://example.org/web")
	require.NoError(t, err, "the new key signs")
	assert.NotEqual(t, kid, jwtHeader(t, fresh.Token)["kid"])
}

func jwtHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	require.NoError(t, err)
	var h map[string]any
	require.NoError(t, json.Unmarshal(raw, &h))
	return h
}
