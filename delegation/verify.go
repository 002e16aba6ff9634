package delegation

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// Limits of the tokens a Verifier accepts.
const (
	// MaxTokenSize is the longest token, in bytes, that is parsed at all.
	MaxTokenSize = 16 << 10
	// MaxActors is the deepest act chain accepted: one actor per hop.
	MaxActors = 16
	// clockSkew is how far exp, nbf and iat may be off the Verifier's clock.
	clockSkew = 30 * time.Second
)

// signatureAlgorithms are those jwtsvid.ParseAndValidate accepts, for
// Txn-Tokens as well: asymmetric only, never "none" or HMAC.
var signatureAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512,
}

// Verifier verifies the delegated tokens sent to one service, identified by
// its SPIFFE ID, against the JWT bundles of a jwtbundle.Source (such as a
// workloadapi.JWTSource, which keeps them current). A Verifier is safe for
// concurrent use.
type Verifier struct {
	bundles jwtbundle.Source
	self    spiffeid.ID
	issuer  string
	now     func() time.Time
	log     *slog.Logger
}

// VerifierOption configures a Verifier.
type VerifierOption func(*Verifier)

// WithClock makes the Verifier read the time from now instead of time.Now.
// go-spiffe checks a JWT-SVID's exp against the system clock in addition.
func WithClock(now func() time.Time) VerifierOption {
	return func(v *Verifier) { v.now = now }
}

// WithIssuer makes the Verifier refuse tokens whose iss is not issuer (the
// Tally server's jwt_issuer). Without it any iss is accepted: the signature
// of the trust domain's key is what makes a token Tally's.
func WithIssuer(issuer string) VerifierOption {
	return func(v *Verifier) { v.issuer = issuer }
}

// WithLogger makes the Middleware log why it refused a token (never the token
// itself) at level Info. Without it nothing is logged.
func WithLogger(log *slog.Logger) VerifierOption {
	return func(v *Verifier) { v.log = log }
}

// NewVerifier returns a Verifier for the service self: JWT-SVIDs must be for
// the audience self.String(), Txn-Tokens for self's trust domain, and are
// verified with that trust domain's JWT bundle from bundles.
func NewVerifier(bundles jwtbundle.Source, self spiffeid.ID, opts ...VerifierOption) (*Verifier, error) {
	if bundles == nil {
		return nil, errors.New("delegation: new verifier: no bundle source")
	}
	if self.IsZero() {
		return nil, errors.New("delegation: new verifier: no SPIFFE ID")
	}
	v := &Verifier{bundles: bundles, self: self, now: time.Now}
	for _, opt := range opts {
		opt(v)
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	return v, nil
}

// claims are the claims of either kind of delegated token
// (docs/delegation.md). A claim of the wrong JSON type fails the decoding.
type claims struct {
	jwt.Claims
	Scope string         `json:"scope"`
	Txn   string         `json:"txn"`
	Usr   map[string]any `json:"usr"` // JWT-SVID
	Act   *actClaim      `json:"act"`
	ReqWL string         `json:"req_wl"` // Txn-Token
	TCtx  *struct {
		Usr map[string]any `json:"usr"`
	} `json:"tctx"` // Txn-Token
	RCtx map[string]any `json:"rctx"` // Txn-Token
}

// actClaim is one level of an RFC 8693 act claim; other members are ignored.
type actClaim struct {
	Sub string    `json:"sub"`
	Act *actClaim `json:"act"`
}

// VerifyJWTSVID verifies token as a JWT-SVID that carries a user and returns
// it. The signature is checked by go-spiffe's jwtsvid.ParseAndValidate with
// the bundle of the trust domain of the token's sub, its aud must hold the
// Verifier's SPIFFE ID, its typ must be JWT, JOSE or absent (so a Txn-Token
// fails), and it must carry usr, txn and an act chain whose current actor is
// its sub. The error wraps ErrTooLarge, ErrNotDelegated or ErrActorChain
// where those apply.
func (v *Verifier) VerifyJWTSVID(token string) (*Token, error) {
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("delegation: JWT-SVID: %w (%d bytes, at most %d)", ErrTooLarge, len(token), MaxTokenSize)
	}
	svid, err := jwtsvid.ParseAndValidate(token, v.bundles, []string{v.self.String()})
	if err != nil {
		return nil, fmt.Errorf("delegation: JWT-SVID: %w", err)
	}
	// Decode the verified claims again, into their types.
	raw, err := json.Marshal(svid.Claims)
	if err != nil {
		return nil, fmt.Errorf("delegation: JWT-SVID: claims: %w", err)
	}
	var c claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("delegation: JWT-SVID: claims: %w", err)
	}
	t, err := v.delegated(JWTSVID, &c, c.Subject, "sub", c.Usr)
	if err != nil {
		return nil, fmt.Errorf("delegation: JWT-SVID: %w", err)
	}
	t.Claims, t.Raw = svid.Claims, token
	return t, nil
}

// VerifyTxnToken verifies token as a Txn-Token and returns it. Its typ must
// be txntoken+jwt, its signature one of a key of the Verifier's trust
// domain's bundle (named by kid), its aud exactly spiffe://<that trust
// domain>, and it must carry sub, txn, req_wl (a SPIFFE ID), tctx.usr and an
// act chain whose current actor is req_wl. The error wraps ErrTooLarge,
// ErrNotDelegated or ErrActorChain where those apply, and jwt.ErrExpired and
// the like for times.
func (v *Verifier) VerifyTxnToken(token string) (*Token, error) {
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("delegation: Txn-Token: %w (%d bytes, at most %d)", ErrTooLarge, len(token), MaxTokenSize)
	}
	tok, err := jwt.ParseSigned(token, signatureAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("delegation: Txn-Token: %w", err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("delegation: Txn-Token: %d signatures, want 1", len(tok.Headers))
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != txnTokenTyp {
		return nil, fmt.Errorf("delegation: Txn-Token: header typ %q, want %q", typ, txnTokenTyp)
	}
	if h.KeyID == "" {
		return nil, errors.New("delegation: Txn-Token: header has no kid")
	}
	td := v.self.TrustDomain()
	bundle, err := v.bundles.GetJWTBundleForTrustDomain(td)
	if err != nil {
		return nil, fmt.Errorf("delegation: Txn-Token: bundle of %q: %w", td, err)
	}
	key, ok := bundle.FindJWTAuthority(h.KeyID)
	if !ok {
		return nil, fmt.Errorf("delegation: Txn-Token: no key %q in the bundle of %q", h.KeyID, td)
	}
	var (
		c   claims
		all map[string]any
	)
	if err := tok.Claims(key, &c, &all); err != nil {
		if errors.Is(err, jose.ErrCryptoFailure) {
			return nil, fmt.Errorf("delegation: Txn-Token: signature does not verify with key %q: %w", h.KeyID, err)
		}
		return nil, fmt.Errorf("delegation: Txn-Token: claims: %w", err)
	}
	if len(c.Audience) != 1 || c.Audience[0] != td.IDString() {
		return nil, fmt.Errorf("delegation: Txn-Token: audience %q, want %q", []string(c.Audience), td.IDString())
	}
	if c.Subject == "" {
		return nil, fmt.Errorf("delegation: Txn-Token: no sub: %w", ErrNotDelegated)
	}
	var usr map[string]any
	if c.TCtx != nil {
		usr = c.TCtx.Usr
	}
	t, err := v.delegated(TxnToken, &c, c.ReqWL, "req_wl", usr)
	if err != nil {
		return nil, fmt.Errorf("delegation: Txn-Token: %w", err)
	}
	t.RequestContext, t.Claims, t.Raw = c.RCtx, all, token
	return t, nil
}

// delegated checks what both kinds share, once the signature is verified:
// the times, the issuer, the sending workload (claim name sender, value
// senderID), the user, txn and the act chain.
func (v *Verifier) delegated(kind Kind, c *claims, senderID, sender string, usr map[string]any) (*Token, error) {
	switch {
	case c.Expiry == nil:
		return nil, errors.New("no exp")
	case c.IssuedAt == nil:
		return nil, errors.New("no iat")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: v.now()}, clockSkew); err != nil {
		return nil, err
	}
	if v.issuer != "" && c.Issuer != v.issuer {
		return nil, fmt.Errorf("issuer %q, want %q", c.Issuer, v.issuer)
	}
	if senderID == "" {
		return nil, fmt.Errorf("no %s", sender)
	}
	subject, err := spiffeid.FromString(senderID)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", sender, senderID, err)
	}
	user, err := parseUser(usr)
	if err != nil {
		return nil, err
	}
	if c.Txn == "" {
		return nil, fmt.Errorf("no txn: %w", ErrNotDelegated)
	}
	actors, err := parseActors(c.Act)
	if err != nil {
		return nil, err
	}
	if actors[0] != subject {
		return nil, fmt.Errorf("%w: current actor %q is not the %s %q", ErrActorChain, actors[0], sender, subject)
	}
	return &Token{
		Kind:     kind,
		Issuer:   c.Issuer,
		Subject:  subject,
		Audience: c.Audience,
		User:     user,
		Scope:    strings.Fields(c.Scope),
		Txn:      c.Txn,
		Actors:   actors,
		IssuedAt: c.IssuedAt.Time(),
		Expiry:   c.Expiry.Time(),
	}, nil
}

// parseUser reads the usr claim: iss and sub non-empty strings, email a
// string and roles an array of strings if present.
func parseUser(usr map[string]any) (User, error) {
	if usr == nil {
		return User{}, fmt.Errorf("no usr: %w", ErrNotDelegated)
	}
	u := User{Claims: usr}
	for _, f := range []struct {
		name     string
		dst      *string
		required bool
	}{
		{"iss", &u.Issuer, true},
		{"sub", &u.Subject, true},
		{"email", &u.Email, false},
	} {
		v, ok := usr[f.name]
		if !ok {
			if f.required {
				return User{}, fmt.Errorf("usr has no %s: %w", f.name, ErrNotDelegated)
			}
			continue
		}
		s, ok := v.(string)
		if !ok || (f.required && s == "") {
			return User{}, fmt.Errorf("usr.%s: want a non-empty string", f.name)
		}
		*f.dst = s
	}
	if v, ok := usr["roles"]; ok {
		list, ok := v.([]any)
		if !ok {
			return User{}, errors.New("usr.roles: want an array of strings")
		}
		u.Roles = make([]string, 0, len(list))
		for _, r := range list {
			s, ok := r.(string)
			if !ok {
				return User{}, errors.New("usr.roles: want an array of strings")
			}
			u.Roles = append(u.Roles, s)
		}
	}
	return u, nil
}

// parseActors flattens the act chain, outermost (current) actor first. Each
// act.sub must be a SPIFFE ID, and there are at most MaxActors.
func parseActors(act *actClaim) ([]spiffeid.ID, error) {
	if act == nil {
		return nil, fmt.Errorf("no act: %w", ErrNotDelegated)
	}
	var actors []spiffeid.ID
	for a := act; a != nil; a = a.Act {
		if len(actors) == MaxActors {
			return nil, fmt.Errorf("%w: more than %d actors", ErrActorChain, MaxActors)
		}
		id, err := spiffeid.FromString(a.Sub)
		if err != nil {
			return nil, fmt.Errorf("%w: actor %d sub %q: %w", ErrActorChain, len(actors)+1, a.Sub, err)
		}
		actors = append(actors, id)
	}
	return actors, nil
}
