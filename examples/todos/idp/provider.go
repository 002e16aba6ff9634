// Package idp is the todos demo's OpenID Connect provider, built on
// zitadel/oidc's op package: a fixed set of users (alice and bob by
// default) sign in with a password through the authorization code flow
// with PKCE, and get an ID token and a JWT access token that carry their
// email and roles. Login drives that flow from Go, without a browser.
//
// It is for demos and tests: users and passwords are in memory in the
// clear, the signing key lives as long as the Provider, and tokens cannot
// be refreshed or revoked.
package idp

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"golang.org/x/text/language"

	"github.com/zitadel/oidc/v3/pkg/op"
)

// Claim names the provider adds to both the ID token and the JWT access
// token, beside iss, sub (the user's ID), aud (the client ID), exp, iat.
// ClaimRoles is a JSON array of strings, empty for a user without roles.
const (
	ClaimEmail         = "email"
	ClaimEmailVerified = "email_verified"
	ClaimRoles         = "roles"
)

// DefaultTTL is the lifetime of tokens when Config.TTL is zero.
const DefaultTTL = 10 * time.Minute

// DefaultRedirectURIs are the loopback redirect URIs a Config registers when
// it names none. Any port is accepted on a loopback redirect URI
// (RFC 8252 §7.3), so http://127.0.0.1:8080/callback matches the first.
var DefaultRedirectURIs = []string{"http://127.0.0.1/callback", "http://localhost/callback"}

// Config configures a Provider.
type Config struct {
	// Issuer is the provider's URL, the iss of its tokens: https, or http
	// on a loopback host (127.0.0.1, ::1, localhost). It has no path: the
	// Handler serves the root. Required.
	Issuer string
	// ClientID is the one client's ID, the aud of its tokens, e.g.
	// "todos-app". Required. The client is public: it has no secret and
	// must use PKCE (S256).
	ClientID string
	// RedirectURIs are the client's registered redirect URIs; default
	// DefaultRedirectURIs.
	RedirectURIs []string
	// Users are who can sign in; default DefaultUsers().
	Users []User
	// TTL is the lifetime of ID and access tokens; default DefaultTTL.
	TTL time.Duration
	// Logger logs sign-ins (never a password or token); default discards.
	// op itself logs nothing through it.
	Logger *slog.Logger
}

// Provider is an OpenID provider. It is safe for concurrent use.
type Provider struct {
	issuer  string
	handler http.Handler
}

// New returns a Provider with a fresh RS256 signing key.
func New(cfg Config) (*Provider, error) {
	insecure, err := checkIssuer(cfg.Issuer)
	if err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		return nil, fmt.Errorf("idp: client id is required")
	}
	if cfg.RedirectURIs == nil {
		cfg.RedirectURIs = DefaultRedirectURIs
	}
	if cfg.Users == nil {
		cfg.Users = DefaultUsers()
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("idp: ttl %s is negative", cfg.TTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	users, err := newDirectory(cfg.Users)
	if err != nil {
		return nil, err
	}
	key, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	c := &client{id: cfg.ClientID, redirectURIs: append([]string{}, cfg.RedirectURIs...), ttl: cfg.TTL}
	st := newStorage(c, users, key, cfg.TTL)

	var opts []op.Option
	if insecure {
		opts = append(opts, op.WithAllowInsecure())
	}
	// cryptoKey encrypts what op makes opaque: the authorization codes.
	var cryptoKey [32]byte
	rand.Read(cryptoKey[:])
	openid, err := op.NewProvider(&op.Config{
		CryptoKey:          cryptoKey,
		CodeMethodS256:     true,
		SupportedUILocales: []language.Tag{language.English},
		SupportedClaims:    slices.Concat(op.DefaultSupportedClaims, []string{ClaimRoles}),
	}, st, op.StaticIssuer(cfg.Issuer), opts...)
	if err != nil {
		return nil, fmt.Errorf("idp: %w", err)
	}

	login := &loginPage{storage: st, callback: op.AuthCallbackURL(openid), log: cfg.Logger}
	mux := http.NewServeMux()
	// The interceptor puts the issuer in the context, for the callback URL.
	mux.Handle(loginPath, op.NewIssuerInterceptor(openid.IssuerFromRequest).Handler(login))
	mux.Handle("/", openid)
	return &Provider{issuer: cfg.Issuer, handler: mux}, nil
}

// checkIssuer reports whether issuer is an http URL, which only a loopback
// host may use.
func checkIssuer(issuer string) (insecure bool, err error) {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" {
		return false, fmt.Errorf("idp: issuer %q is not an absolute URL", issuer)
	}
	if u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return false, fmt.Errorf("idp: issuer %q: want no path, query or fragment", issuer)
	}
	switch u.Scheme {
	case "https":
		return false, nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return false, fmt.Errorf("idp: issuer %q: http is only allowed on a loopback host", issuer)
		}
		return true, nil
	default:
		return false, fmt.Errorf("idp: issuer %q: want https or http on loopback", issuer)
	}
}

// Issuer returns the provider's issuer URL.
func (p *Provider) Issuer() string { return p.issuer }

// Handler returns the provider's HTTP handler, to serve at the root of the
// issuer's host: discovery at /.well-known/openid-configuration, the JWKS
// at /keys, /authorize, /oauth/token, /userinfo, /healthz, /ready, and the
// login page at /login.
func (p *Provider) Handler() http.Handler { return p.handler }
