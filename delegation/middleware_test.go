package delegation

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// echoHandler answers 200 with the kind, subject and user of the token in
// the context, or 500 if there is none.
var echoHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	t, ok := FromContext(r.Context())
	if !ok {
		http.Error(w, "no token in context", http.StatusInternalServerError)
		return
	}
	_, _ = w.Write([]byte(t.Kind.String() + " " + t.Subject.String() + " " + t.User.Subject))
})

func serve(h http.Handler, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/orders", nil)
	for k, vs := range header {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestMiddleware(t *testing.T) {
	fx := newVerifyFixture(t)
	jwtSVID := fx.ca.sign(t, "JWT", jwtSVIDClaims(fx.now))
	txnToken := fx.ca.sign(t, "txntoken+jwt", txnTokenClaims(fx.now))
	badSVID := fx.ca.sign(t, "JWT", with(jwtSVIDClaims(fx.now), func(c map[string]any) { delete(c, "usr") }))
	h := fx.verifier.Middleware(echoHandler)

	const (
		invalid = `Bearer error="invalid_token"`
		badReq  = `Bearer error="invalid_request"`
	)
	for _, tc := range []struct {
		name      string
		header    http.Header
		code      int
		challenge string
		body      string
	}{
		{name: "JWT-SVID", header: http.Header{"Authorization": {"Bearer " + jwtSVID}}, code: 200, body: "JWT-SVID spiffe://example.org/frontend alice"},
		{name: "bearer scheme in lower case", header: http.Header{"Authorization": {"bearer " + jwtSVID}}, code: 200, body: "JWT-SVID"},
		{name: "Txn-Token", header: http.Header{"Txn-Token": {txnToken}}, code: 200, body: "Txn-Token spiffe://example.org/frontend alice"},
		{name: "no token", header: nil, code: 401, challenge: "Bearer", body: "token required"},
		{name: "Basic credentials", header: http.Header{"Authorization": {"Basic YWxpY2U6cHc="}}, code: 401, challenge: "Bearer"},
		{name: "empty bearer", header: http.Header{"Authorization": {"Bearer "}}, code: 400, challenge: badReq},
		{name: "invalid JWT-SVID", header: http.Header{"Authorization": {"Bearer " + badSVID}}, code: 401, challenge: invalid, body: "invalid token"},
		{name: "Txn-Token as bearer", header: http.Header{"Authorization": {"Bearer " + txnToken}}, code: 401, challenge: invalid},
		{name: "JWT-SVID in Txn-Token header", header: http.Header{"Txn-Token": {jwtSVID}}, code: 401, challenge: invalid},
		{name: "two Txn-Tokens", header: http.Header{"Txn-Token": {txnToken, txnToken}}, code: 400, challenge: badReq},
		{name: "two Authorization headers", header: http.Header{"Authorization": {"Bearer " + jwtSVID, "Bearer " + jwtSVID}}, code: 400, challenge: badReq},
		// The Txn-Token header takes precedence; Authorization is not read.
		{name: "both: Txn-Token used", header: http.Header{"Txn-Token": {txnToken}, "Authorization": {"Bearer " + jwtSVID}}, code: 200, body: "Txn-Token"},
		{name: "both: other Authorization ignored", header: http.Header{"Txn-Token": {txnToken}, "Authorization": {"Basic YWxpY2U6cHc="}}, code: 200, body: "Txn-Token"},
		{name: "both: invalid Txn-Token not rescued", header: http.Header{"Txn-Token": {badSVID}, "Authorization": {"Bearer " + jwtSVID}}, code: 401, challenge: invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(h, tc.header)
			require.Equal(t, tc.code, w.Code, w.Body.String())
			require.Equal(t, tc.challenge, w.Header().Get("WWW-Authenticate"))
			require.Contains(t, w.Body.String(), tc.body)
			if tc.code != 200 {
				require.Equal(t, "no-store", w.Header().Get("Cache-Control"))
				for _, tok := range []string{jwtSVID, txnToken, badSVID} {
					require.NotContains(t, w.Body.String(), tok[:20])
				}
			}
		})
	}
}

func TestRequireScope(t *testing.T) {
	fx := newVerifyFixture(t)
	jwtSVID := fx.ca.sign(t, "JWT", jwtSVIDClaims(fx.now)) // orders.read orders.write
	bearer := http.Header{"Authorization": {"Bearer " + jwtSVID}}

	w := serve(fx.verifier.Middleware(RequireScope("orders.write", echoHandler)), bearer)
	require.Equal(t, 200, w.Code, w.Body.String())

	w = serve(fx.verifier.Middleware(RequireScope("orders.admin", echoHandler)), bearer)
	require.Equal(t, 403, w.Code)
	require.Equal(t, `Bearer error="insufficient_scope", scope="orders.admin"`, w.Header().Get("WWW-Authenticate"))

	// A scope that cannot be quoted is left out of the challenge.
	w = serve(fx.verifier.Middleware(RequireScope(`a"b`, echoHandler)), bearer)
	require.Equal(t, 403, w.Code)
	require.Equal(t, `Bearer error="insufficient_scope"`, w.Header().Get("WWW-Authenticate"))

	// Without the Middleware there is no token.
	w = serve(RequireScope("orders.read", echoHandler), bearer)
	require.Equal(t, 401, w.Code)
	require.False(t, strings.Contains(w.Body.String(), "orders"))
}

func TestFromContext(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	_, ok := FromContext(r.Context())
	require.False(t, ok)
	_, ok = FromContext(NewContext(r.Context(), nil))
	require.False(t, ok)
	tok := &Token{Txn: "x"}
	got, ok := FromContext(NewContext(r.Context(), tok))
	require.True(t, ok)
	require.Same(t, tok, got)
}

func TestMiddlewareLogsReasonNotToken(t *testing.T) {
	var logs strings.Builder
	fx := newVerifyFixture(t, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	bad := fx.ca.sign(t, "JWT", with(jwtSVIDClaims(fx.now), func(c map[string]any) { delete(c, "usr") }))

	w := serve(fx.verifier.Middleware(echoHandler), http.Header{"Authorization": {"Bearer " + bad}})
	require.Equal(t, 401, w.Code)
	require.Contains(t, logs.String(), "no usr")
	require.NotContains(t, logs.String(), bad[:20])
}

// A JWT-SVID sent over mTLS must come from its sub; a Txn-Token travels the
// call chain and is not bound to the peer.
func TestMiddlewareBindsJWTSVIDToTheTLSPeer(t *testing.T) {
	fx := newVerifyFixture(t)
	jwtSVID := fx.ca.sign(t, "JWT", jwtSVIDClaims(fx.now))
	txnToken := fx.ca.sign(t, "txntoken+jwt", txnTokenClaims(fx.now))
	h := fx.verifier.Middleware(echoHandler)
	from := func(id string, header http.Header) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/orders", nil)
		r.Header = header
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{mustURL(t, id)}}}}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	bearer := http.Header{"Authorization": {"Bearer " + jwtSVID}}
	require.Equal(t, http.StatusOK, from("spiffe://example.org/frontend", bearer).Code)
	replayed := from("spiffe://example.org/intruder", bearer)
	require.Equal(t, http.StatusUnauthorized, replayed.Code)
	require.Equal(t, `Bearer error="invalid_token"`, replayed.Header().Get("WWW-Authenticate"))
	require.Equal(t, http.StatusOK, from("spiffe://example.org/intruder", http.Header{"Txn-Token": {txnToken}}).Code)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}
