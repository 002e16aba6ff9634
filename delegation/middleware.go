package delegation

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Middleware returns a handler that verifies the delegated token of each
// request and calls next with the *Token in the request's context
// (FromContext).
//
// The token is read from the Txn-Token header (a Txn-Token) or, when there
// is no Txn-Token header, from "Authorization: Bearer" (a JWT-SVID). A
// Txn-Token header takes precedence: the Authorization header is then not
// read at all, as it may carry another credential beside the Txn-Token.
//
// Refusals follow RFC 6750 and never echo the token:
//   - no token: 401 with "WWW-Authenticate: Bearer";
//   - a token that does not verify: 401 with
//     `WWW-Authenticate: Bearer error="invalid_token"`;
//   - a header given twice or an empty Bearer credential: 400 with
//     error="invalid_request".
//
// A JWT-SVID is bound to its sender: when the request came over mutual TLS
// with an X509-SVID, the token's sub must be the peer's SPIFFE ID, so a
// delegated token one workload received cannot be replayed by another
// (401 invalid_token). A Txn-Token is not bound: by the draft it travels the
// whole call chain of its trust domain.
//
// The reason of a refusal is logged with WithLogger's logger.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, token, ok := v.readToken(w, r)
		if !ok {
			return
		}
		var (
			t   *Token
			err error
		)
		if kind == TxnToken {
			t, err = v.VerifyTxnToken(token)
		} else {
			t, err = v.VerifyJWTSVID(token)
		}
		if err == nil && kind == JWTSVID {
			err = checkSender(r, t)
		}
		if err != nil {
			v.log.Info("delegation: token refused", "kind", kind.String(), "error", err)
			refuse(w, http.StatusUnauthorized, `Bearer error="invalid_token"`, "invalid token")
			return
		}
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), t)))
	})
}

// checkSender checks that a JWT-SVID came from the workload it names: the
// mTLS peer, if the request has one.
func checkSender(r *http.Request, t *Token) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("delegation: the TLS peer has no SPIFFE ID: %w", err)
	}
	if peer != t.Subject {
		return fmt.Errorf("delegation: token of %s sent by %s: %w", t.Subject, peer, ErrWrongSender)
	}
	return nil
}

// readToken returns the request's token and its kind, or writes the refusal
// and returns false.
func (v *Verifier) readToken(w http.ResponseWriter, r *http.Request) (Kind, string, bool) {
	if txn := r.Header.Values(TxnTokenHeader); len(txn) > 0 {
		if len(txn) > 1 || txn[0] == "" {
			v.log.Info("delegation: token refused", "kind", TxnToken.String(), "error", "not exactly one Txn-Token header value")
			refuse(w, http.StatusBadRequest, `Bearer error="invalid_request"`, "want one Txn-Token header")
			return 0, "", false
		}
		return TxnToken, strings.TrimSpace(txn[0]), true
	}
	authz := r.Header.Values("Authorization")
	switch {
	case len(authz) == 0:
		refuse(w, http.StatusUnauthorized, "Bearer", "token required")
		return 0, "", false
	case len(authz) > 1:
		v.log.Info("delegation: token refused", "kind", JWTSVID.String(), "error", "several Authorization headers")
		refuse(w, http.StatusBadRequest, `Bearer error="invalid_request"`, "want one Authorization header")
		return 0, "", false
	}
	scheme, token, _ := strings.Cut(authz[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		refuse(w, http.StatusUnauthorized, "Bearer", "bearer token required")
		return 0, "", false
	}
	if token = strings.TrimSpace(token); token == "" {
		refuse(w, http.StatusBadRequest, `Bearer error="invalid_request"`, "empty bearer token")
		return 0, "", false
	}
	return JWTSVID, token, true
}

// RequireScope returns a handler that calls next only for requests whose
// verified token (put in the context by Middleware) grants scope. Otherwise
// it answers 403 with `WWW-Authenticate: Bearer error="insufficient_scope"`,
// or 401 if there is no token in the context at all.
func RequireScope(scope string, next http.Handler) http.Handler {
	challenge := `Bearer error="insufficient_scope"`
	if isScopeToken(scope) {
		challenge += `, scope="` + scope + `"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, ok := FromContext(r.Context())
		if !ok {
			refuse(w, http.StatusUnauthorized, "Bearer", "token required")
			return
		}
		if !t.HasScope(scope) {
			refuse(w, http.StatusForbidden, challenge, "insufficient scope")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// isScopeToken reports whether s is a scope-token of RFC 6749 section 3.3,
// which may be quoted in a challenge as is.
func isScopeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return s != ""
}

func refuse(w http.ResponseWriter, code int, challenge, msg string) {
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, code)
}
