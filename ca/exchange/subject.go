package exchange

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/internal/text"
)

// subject is a verified subject token.
type subject struct {
	user   User
	txn    string   // the chain's transaction; empty for a user's own token
	scope  []string // a Tally token's scope, which bounds the grant
	tally  bool     // issued by Tally (continues a chain)
	act    *Actor   // the chain so far (Tally tokens)
	expiry time.Time
}

// signedAlgs are the only algorithms a subject token may use: ES256 (Tally's
// keys, and issuers') and RS256. Anything else — none, HS256 — is refused
// before a key is looked at.
var signedAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.RS256}

// verifySubject verifies r's subject token for caller: a Tally token issued
// to the caller, or a user's token from a configured issuer.
func (s *Service) verifySubject(ctx context.Context, a *active, c Caller, r Request, requested string) (*subject, error) {
	h, claims, err := peek(r.SubjectToken)
	if err != nil {
		return nil, err
	}
	iss, _ := claims["iss"].(string)
	if iss == s.cfg.Issuer {
		return s.verifyTally(r, requested, h, c)
	}
	is, ok := a.issuers[iss]
	if !ok {
		return nil, refuse(CodeInvalidGrant, "subject token issuer %q is not trusted", text.Printable(iss))
	}
	if h.Typ == ca.TxnTokenType {
		return nil, refuse(CodeInvalidGrant, "subject token: a Txn-Token from issuer %q", iss)
	}
	switch r.SubjectTokenType {
	case TypeIDToken, TypeAccess, TypeJWT:
	default:
		return nil, refuse(CodeInvalidRequest, "subject_token_type %s does not fit a token from issuer %s", r.SubjectTokenType, iss)
	}
	// go-oidc verifies the very bytes claims was decoded from.
	id, err := is.verify(ctx, r.SubjectToken, claims)
	if err != nil {
		if errors.Is(err, errUnavailable) {
			return nil, refuse(CodeUnavailable, "%w", err)
		}
		return nil, refuse(CodeInvalidGrant, "subject token: %w", err)
	}
	if err := checkMayAct(claims, c.ID); err != nil {
		return nil, err
	}
	for _, k := range reservedClaims {
		delete(claims, k)
	}
	return &subject{user: User{Issuer: id.Issuer, Subject: id.Subject, Claims: claims}, expiry: id.Expiry}, nil
}

// joseHeader is what a subject token's header must say.
type joseHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// peek decodes a compact JWS's header and claims, unverified, to decide how
// to verify it: the algorithm must be one of signedAlgs, the claims a JSON
// object.
func peek(token string) (joseHeader, map[string]any, error) {
	var h joseHeader
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return h, nil, refuse(CodeInvalidGrant, "subject token: malformed token (want a compact JWS of three parts)")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(raw, &h) != nil {
		return h, nil, refuse(CodeInvalidGrant, "subject token: malformed header")
	}
	if !slices.Contains(signedAlgs, jose.SignatureAlgorithm(h.Alg)) {
		return h, nil, refuse(CodeInvalidGrant, "subject token: unsupported signature algorithm %q (ES256 or RS256 only)", text.Printable(h.Alg))
	}
	var claims map[string]any
	raw, err = base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(raw, &claims) != nil || claims == nil {
		return h, nil, refuse(CodeInvalidGrant, "subject token: claims are not a JSON object")
	}
	return h, claims, nil
}

// checkMayAct enforces a user token's may_act claim (RFC 8693 section 4.4),
// when it has one: only the actor it names may exchange the token.
func checkMayAct(claims map[string]any, caller spiffeid.ID) error {
	raw, ok := claims["may_act"]
	if !ok {
		return nil
	}
	m, _ := raw.(map[string]any)
	if sub, _ := m["sub"].(string); sub != caller.String() {
		return refuse(CodeInvalidGrant, "subject token's may_act does not name %s", caller)
	}
	return nil
}

// verifyTally verifies a token Tally issued: signed by a JWT key of the
// current bundle (a key removed from it, revoked, verifies nothing), not
// expired, and issued to the caller: a JWT-SVID whose aud holds the caller's
// SPIFFE ID, or a Txn-Token of this trust domain, which may only be replaced
// by another Txn-Token. It must carry a user, a txn and an actor chain.
func (s *Service) verifyTally(r Request, requested string, h joseHeader, c Caller) (*subject, error) {
	key, ok := s.cfg.Signer.Bundle().FindJWTAuthority(h.Kid)
	if !ok {
		return nil, refuse(CodeInvalidGrant, "subject token is signed by key %q, which is not in the trust bundle (unknown or revoked)", text.Printable(h.Kid))
	}
	if h.Alg != string(jose.ES256) {
		return nil, refuse(CodeInvalidGrant, "subject token: Tally signs with ES256, not %s", h.Alg)
	}
	tok, err := jwt.ParseSigned(r.SubjectToken, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, refuse(CodeInvalidGrant, "subject token: %s", joseReason(err))
	}
	typ := h.Typ
	var cl tallyClaims
	if err := tok.Claims(key, &cl); err != nil {
		return nil, refuse(CodeInvalidGrant, "subject token: %s", joseReason(err))
	}
	now := s.cfg.Clock.Now()
	if cl.Expiry == nil || !now.Before(time.Unix(*cl.Expiry, 0)) {
		return nil, refuse(CodeInvalidGrant, "subject token has expired")
	}
	if cl.IssuedAt != nil && time.Unix(*cl.IssuedAt, 0).After(now.Add(maxNotBeforeSkew)) {
		return nil, refuse(CodeInvalidGrant, "subject token is issued in the future")
	}
	aud, err := cl.audiences()
	if err != nil {
		return nil, refuse(CodeInvalidGrant, "subject token: %w", err)
	}
	sub := &subject{txn: cl.Txn, scope: strings.Fields(cl.Scope), tally: true, act: cl.Act, expiry: time.Unix(*cl.Expiry, 0)}
	var actor string
	switch typ {
	case ca.TxnTokenType:
		if r.SubjectTokenType != TypeTxnToken {
			return nil, refuse(CodeInvalidRequest, "subject token is a Txn-Token; subject_token_type must be %s", TypeTxnToken)
		}
		if !slices.Equal(aud, []string{s.tdID}) {
			return nil, refuse(CodeInvalidGrant, "subject Txn-Token is not for trust domain %s", s.tdID)
		}
		if requested != TypeTxnToken {
			return nil, refuse(CodeInvalidGrant, "a Txn-Token can only be replaced by another Txn-Token: its audience is the whole trust domain, not %s", c.ID)
		}
		if cl.TCtx == nil || cl.TCtx.User == nil || cl.TCtx.User.Subject != cl.Subject {
			return nil, refuse(CodeInvalidGrant, "subject Txn-Token carries no user context")
		}
		sub.user, actor = *cl.TCtx.User, cl.ReqWL
	case "JWT", "":
		if r.SubjectTokenType != TypeJWT {
			return nil, refuse(CodeInvalidRequest, "subject token is a JWT-SVID; subject_token_type must be %s", TypeJWT)
		}
		if !slices.Contains(aud, c.ID.String()) {
			return nil, refuse(CodeInvalidGrant, "subject token was not issued to %s", c.ID)
		}
		if cl.User == nil {
			return nil, refuse(CodeInvalidGrant, "subject token is a JWT-SVID that carries no user")
		}
		sub.user, actor = *cl.User, cl.Subject
	default:
		return nil, refuse(CodeInvalidGrant, "subject token has typ %q", typ)
	}
	switch {
	case cl.Txn == "":
		return nil, refuse(CodeInvalidGrant, "subject token has no txn")
	case cl.Act == nil || cl.Act.Sub != actor:
		return nil, refuse(CodeInvalidGrant, "subject token's act chain does not start with its own workload")
	case cl.Act.depth() >= maxChain:
		return nil, refuse(CodeInvalidGrant, "delegation chain is longer than %d actors", maxChain)
	}
	return sub, nil
}

// joseReason says why go-jose refused a token, without echoing it.
func joseReason(err error) string {
	switch {
	case errors.Is(err, jose.ErrCryptoFailure):
		return "signature does not verify"
	case strings.Contains(err.Error(), "unexpected signature algorithm"):
		return "unsupported signature algorithm (ES256 or RS256 only)"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return "malformed JSON"
	}
	return fmt.Sprintf("malformed token (%s)", strings.TrimPrefix(err.Error(), "go-jose/go-jose: "))
}
