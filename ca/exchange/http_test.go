package exchange

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca"
)

// endpoint serves the Handler over real TLS with the server's SVID,
// requesting client certificates as tally-server does.
func (f *fixture) endpoint(t testing.TB) *httptest.Server {
	t.Helper()
	srvCert := f.svid(t, spiffeid.RequireFromString("spiffe://example.org/tally/server"))
	srv := httptest.NewUnstartedServer(f.svc.Handler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	srv.Config.ConnContext = ConnContext
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// client trusts the trust domain's roots, presenting cert if given.
func (f *fixture) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: roots(f.a), InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} // the SVID has no DNS SAN; the test trusts its roots only
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func post(t *testing.T, c *http.Client, u string, form url.Values) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := c.PostForm(u, form)
	require.NoError(t, err)
	defer resp.Body.Close()
	var body map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	return resp.StatusCode, body, resp.Header
}

func (f *fixture) form(t testing.TB) url.Values {
	return url.Values{"grant_type": {GrantType}, "subject_token": {f.idp.token(t, "bob")},
		"subject_token_type": {TypeIDToken}, "audience": {todos.String()}, "scope": {"todos.read"}}
}

func TestEndpointOverMTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.endpoint(t)
	cert := f.svid(t, shares)
	c := f.client(&cert)
	for range 3 { // one kept-alive connection, verified once
		status, body, h := post(t, c, srv.URL+"/oauth2/token", f.form(t))
		require.Equal(t, http.StatusOK, status, body)
		assert.Equal(t, "no-store", h.Get("Cache-Control"))
		assert.Equal(t, TypeJWT, body["issued_token_type"])
		assert.Equal(t, "N_A", body["token_type"])
		assert.Equal(t, "todos.read", body["scope"])
		_, err := jwtsvid.ParseAndValidate(body["access_token"].(string), f.a.Bundle(), []string{todos.String()})
		require.NoError(t, err)
		assert.NotContains(t, body, "refresh_token")
	}
}

func TestEndpointClientAssertion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.endpoint(t)
	c := f.client(nil)
	assertion := func(aud string) string {
		tok, _, err := f.a.SignJWTSVID(context.Background(), ca.JWTSVIDParams{ID: shares, Audience: []string{aud}})
		require.NoError(t, err)
		return tok
	}
	form := f.form(t)
	form.Set("client_assertion_type", ClientAssertionType)
	form.Set("client_assertion", assertion(f.svc.TokenEndpoint()))
	status, body, _ := post(t, c, srv.URL+"/oauth2/token", form)
	require.Equal(t, http.StatusOK, status, body)
	assert.Equal(t, shares.String(), payload(t, body["access_token"].(string))["sub"])

	// An assertion for another audience (a JWT-SVID sent to some service,
	// replayed here) authenticates nobody.
	form.Set("client_assertion", assertion(todos.String()))
	status, body, _ = post(t, c, srv.URL+"/oauth2/token", form)
	assert.Equal(t, http.StatusUnauthorized, status)
	assert.Equal(t, CodeInvalidClient, body["error"])
}

func TestEndpointBadRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.endpoint(t)
	cert := f.svid(t, shares)
	mtls := f.client(&cert)
	u := srv.URL + "/oauth2/token"

	status, body, _ := post(t, f.client(nil), u, f.form(t))
	assert.Equal(t, http.StatusUnauthorized, status, "a caller without an SVID")
	assert.Equal(t, CodeInvalidClient, body["error"])

	big := f.form(t)
	big.Set("subject_token", strings.Repeat("a", 1<<20))
	status, body, _ = post(t, mtls, u, big)
	assert.Equal(t, http.StatusRequestEntityTooLarge, status, "a 1 MiB body")
	assert.Equal(t, CodeInvalidRequest, body["error"])

	dup := f.form(t)
	dup.Add("subject_token", "second")
	status, body, _ = post(t, mtls, u, dup)
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Contains(t, body["error_description"], "more than once")

	resp, err := mtls.Post(u, "application/json", strings.NewReader(`{}`))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "not a form")
	resp, err = mtls.Get(u)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	widen := f.form(t)
	widen.Set("scope", "todos.write")
	status, body, _ = post(t, mtls, u, widen)
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Equal(t, CodeInvalidScope, body["error"])
	assert.Equal(t, "shares-to-todos", body["rule"])
	assert.Contains(t, body["error_description"], "(rule shares-to-todos)")

	status, body, _ = post(t, mtls, u, f.form(t))
	assert.Equal(t, http.StatusOK, status, "still serving: %v", body)
}
