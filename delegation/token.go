package delegation

import (
	"context"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kind is the form of a delegated token.
type Kind int

const (
	// JWTSVID is a JWT-SVID that carries the user, for one audience
	// (docs/delegation.md); sent as "Authorization: Bearer".
	JWTSVID Kind = iota + 1
	// TxnToken is a Txn-Token (draft-ietf-oauth-transaction-tokens-10) for
	// the whole trust domain; sent in the Txn-Token header.
	TxnToken
)

func (k Kind) String() string {
	switch k {
	case JWTSVID:
		return "JWT-SVID"
	case TxnToken:
		return "Txn-Token"
	default:
		return "unknown"
	}
}

// tokenType is the RFC 8693 token type URI of a token of kind k.
func (k Kind) tokenType() string {
	if k == TxnToken {
		return TokenTypeTxnToken
	}
	return TokenTypeJWT
}

// Token is a delegated token that a Verifier verified: a request made by
// Subject on behalf of User. Its fields are read from claims that Tally
// signed; Actors in particular is trustworthy only because the whole token
// is (see docs/delegation.md, "Trust in the chain").
type Token struct {
	Kind Kind
	// Issuer is Tally's iss (the server's jwt_issuer).
	Issuer string
	// Subject is the workload that sent the token: the JWT-SVID's sub, or the
	// Txn-Token's req_wl.
	Subject spiffeid.ID
	// Audience is the aud claim: this service's SPIFFE ID (JWT-SVID) or
	// spiffe://<trust domain> (Txn-Token).
	Audience []string
	// User is the user on whose behalf the request is made.
	User User
	// Scope is the granted scopes, in the order of the scope claim.
	Scope []string
	// Txn is the transaction id, the same along the whole chain.
	Txn string
	// Actors is the actor chain from the act claim, current actor (equal to
	// Subject) first, the workload that made the first exchange last.
	Actors []spiffeid.ID
	// IssuedAt and Expiry are the iat and exp claims.
	IssuedAt, Expiry time.Time
	// RequestContext is the Txn-Token's rctx (authn, req_ip, agent); nil for
	// a JWT-SVID.
	RequestContext map[string]any
	// Claims is every claim of the token, as decoded JSON.
	Claims map[string]any
	// Raw is the token as received, to exchange it for the next hop
	// (Client.OnBehalfOf). Never log it.
	Raw string
}

// User is the user a delegated token carries (its usr claim).
type User struct {
	// Issuer and Subject are the user's issuer and subject at their OIDC
	// provider; never empty in a verified Token.
	Issuer, Subject string
	// Email is the email claim, if the policy passed one.
	Email string
	// Roles is the roles claim, if the policy passed one.
	Roles []string
	// Claims is the whole usr claim, including iss and sub.
	Claims map[string]any
}

// HasScope reports whether s is one of the token's granted scopes.
func (t *Token) HasScope(s string) bool {
	return slices.Contains(t.Scope, s)
}

// HasRole reports whether role is one of the user's roles.
func (u User) HasRole(role string) bool {
	return slices.Contains(u.Roles, role)
}

type contextKey struct{}

// NewContext returns ctx carrying t, as the Middleware stores it.
func NewContext(ctx context.Context, t *Token) context.Context {
	return context.WithValue(ctx, contextKey{}, t)
}

// FromContext returns the verified token that the Middleware stored in ctx,
// and whether there is one.
func FromContext(ctx context.Context) (*Token, bool) {
	t, ok := ctx.Value(contextKey{}).(*Token)
	return t, ok && t != nil
}
