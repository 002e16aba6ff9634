package idp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// authRequestTTL is how long an auth request, and the code issued for it,
// is kept: sign-in and code exchange must happen within it.
const authRequestTTL = 5 * time.Minute

var (
	_ op.Storage                   = (*storage)(nil)
	_ op.CanSetUserinfoFromRequest = (*storage)(nil)
)

var errUnsupported = errors.New("idp: not supported by this provider")

// storage is op's view of the provider: one client, a fixed set of users,
// one signing key, and the auth requests in flight, in memory. Tokens are
// self-contained JWTs and are not stored, so they cannot be revoked or
// refreshed. Safe for concurrent use.
type storage struct {
	client *client
	users  directory
	key    *signingKey
	ttl    time.Duration

	mu       sync.Mutex
	requests map[string]*authRequest // by ID
	codes    map[string]string       // code → auth request ID
}

func newStorage(c *client, users directory, key *signingKey, ttl time.Duration) *storage {
	return &storage{
		client:   c,
		users:    users,
		key:      key,
		ttl:      ttl,
		requests: make(map[string]*authRequest),
		codes:    make(map[string]string),
	}
}

// CreateAuthRequest stores a validated authorization request; the login
// page completes it. userID is always empty here: the provider keeps no
// sessions, so every request signs in afresh (and prompt=none fails).
func (s *storage) CreateAuthRequest(_ context.Context, r *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	if len(r.Prompt) == 1 && r.Prompt[0] == oidc.PromptNone {
		return nil, oidc.ErrLoginRequired()
	}
	now := time.Now()
	req := newAuthRequest(rand.Text(), now, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	s.requests[req.id] = req
	return req, nil
}

// pruneLocked forgets the auth requests, and their codes, older than
// authRequestTTL.
func (s *storage) pruneLocked(now time.Time) {
	for id, req := range s.requests {
		if now.Sub(req.created) > authRequestTTL {
			delete(s.requests, id)
		}
	}
	for code, id := range s.codes {
		if _, ok := s.requests[id]; !ok {
			delete(s.codes, code)
		}
	}
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requestLocked(id)
}

func (s *storage) requestLocked(id string) (*authRequest, error) {
	req, ok := s.requests[id]
	if !ok || time.Since(req.created) > authRequestTTL {
		return nil, fmt.Errorf("idp: auth request %q not found or expired", id)
	}
	return req, nil
}

func (s *storage) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.codes[code]
	if !ok {
		return nil, errors.New("idp: code not found or expired")
	}
	return s.requestLocked(id)
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest is called once tokens were issued for the request, so
// its code cannot be used twice.
func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.requests, id)
	for code, reqID := range s.codes {
		if reqID == id {
			delete(s.codes, code)
		}
	}
	return nil
}

// signIn completes auth request id for the user whose ID or email is
// username. It returns ErrInvalidCredentials for a wrong username or
// password.
func (s *storage) signIn(id, username, password string) (User, error) {
	u, err := s.users.authenticate(username, password)
	if err != nil {
		return User{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	req, err := s.requestLocked(id)
	if err != nil {
		return User{}, err
	}
	s.requests[id] = req.signedIn(u.ID, time.Now())
	return u, nil
}

// CreateAccessToken returns the jti and expiry of a JWT access token; op
// signs the JWT itself, with the claims of GetPrivateClaimsFromScopes.
func (s *storage) CreateAccessToken(context.Context, op.TokenRequest) (string, time.Time, error) {
	return rand.Text(), time.Now().Add(s.ttl), nil
}

// CreateAccessAndRefreshTokens is called only for a refresh token, which the
// client's grant types never allow.
func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, fmt.Errorf("idp: refresh tokens: %w", errUnsupported)
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

// TerminateSession has nothing to end: there are no sessions.
func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(context.Context, string, string, string) *oidc.Error {
	// RFC 7009 §2.2.1; oidc has no constructor for this error type.
	return &oidc.Error{ErrorType: "unsupported_token_type", Description: "tokens are short-lived JWTs and cannot be revoked"}
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) { return s.key, nil }

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{s.key.SignatureAlgorithm()}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.key}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	if id != s.client.id {
		return nil, fmt.Errorf("idp: unknown client %q", id)
	}
	return s.client, nil
}

// AuthorizeClientIDSecret refuses every secret: the only client is public.
func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, _ string) error {
	return fmt.Errorf("idp: client %q has no secret", id)
}

// SetUserinfoFromScopes is deprecated in op in favour of
// SetUserinfoFromRequest.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

// SetUserinfoFromRequest fills the ID token's claims. It must set the
// subject too: op copies it over the token's sub.
func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, r op.IDTokenRequest, _ []string) error {
	return s.setUserinfo(info, r.GetSubject())
}

// SetUserinfoFromToken answers /userinfo for a JWT access token op has
// verified.
func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, _, subject, _ string) error {
	return s.setUserinfo(info, subject)
}

func (s *storage) setUserinfo(info *oidc.UserInfo, userID string) error {
	u, err := s.users.user(userID)
	if err != nil {
		return err
	}
	info.Subject = u.ID
	info.Email = u.Email
	info.EmailVerified = true
	info.AppendClaims(ClaimRoles, u.Roles)
	return nil
}

// GetPrivateClaimsFromScopes returns the claims op adds to a JWT access
// token.
func (s *storage) GetPrivateClaimsFromScopes(_ context.Context, userID, _ string, _ []string) (map[string]any, error) {
	u, err := s.users.user(userID)
	if err != nil {
		return nil, err
	}
	return map[string]any{ClaimEmail: u.Email, ClaimEmailVerified: true, ClaimRoles: u.Roles}, nil
}

// SetIntrospectionFromToken is unreachable: introspection needs a client
// that can authenticate, and the only client is public.
func (s *storage) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return fmt.Errorf("idp: introspection: %w", errUnsupported)
}

// GetKeyByIDAndClientID serves private_key_jwt and JWT profile grants, which
// the provider does not offer.
func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, fmt.Errorf("idp: client keys: %w", errUnsupported)
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, fmt.Errorf("idp: JWT profile grant: %w", errUnsupported)
}

func (s *storage) Health(context.Context) error { return nil }
