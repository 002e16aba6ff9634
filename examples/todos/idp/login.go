package idp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	oidcclient "github.com/zitadel/oidc/v3/pkg/client"
	"github.com/zitadel/oidc/v3/pkg/oidc"
)

// Tokens are what a sign-in returns.
type Tokens struct {
	IDToken     string
	AccessToken string
	// Expiry is when the access token expires.
	Expiry time.Time
}

// Login signs username (a user's ID or email) in at the provider at issuer
// the way a browser would, through the authorization code flow with PKCE:
// it discovers the endpoints, follows /authorize to the login page, posts
// the password there, takes the code from the redirect to redirectURI, and
// exchanges it for tokens as public client clientID. The redirect to
// redirectURI is intercepted, so nothing needs to listen there.
//
// httpClient's transport, jar and timeout are used (nil means
// http.DefaultClient); httpClient itself is not modified. A wrong username
// or password returns an error wrapping ErrInvalidCredentials.
func Login(ctx context.Context, httpClient *http.Client, issuer, clientID, redirectURI, username, password string) (Tokens, error) {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	callback, err := url.Parse(redirectURI)
	if err != nil {
		return Tokens{}, fmt.Errorf("idp: login: redirect uri: %w", err)
	}
	c := *httpClient
	if c.Jar == nil {
		c.Jar, _ = cookiejar.New(nil) // never fails without options
	}
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if isCallback(req.URL, callback) {
			return http.ErrUseLastResponse
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}

	disc, err := oidcclient.Discover(ctx, issuer, &c)
	if err != nil {
		return Tokens{}, fmt.Errorf("idp: login: discovery: %w", err)
	}
	conf := oauth2.Config{
		ClientID:    clientID,
		RedirectURL: redirectURI,
		Scopes:      []string{oidc.ScopeOpenID, oidc.ScopeEmail},
		Endpoint: oauth2.Endpoint{
			AuthURL:   disc.AuthorizationEndpoint,
			TokenURL:  disc.TokenEndpoint,
			AuthStyle: oauth2.AuthStyleInParams,
		},
	}
	state, verifier := rand.Text(), oauth2.GenerateVerifier()

	// /authorize redirects to the login page.
	resp, err := do(ctx, &c, http.MethodGet, conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)), nil)
	if err != nil {
		return Tokens{}, fmt.Errorf("idp: login: authorize: %w", err)
	}
	page := resp.Request.URL
	if resp.StatusCode != http.StatusOK || page.Path != loginPath {
		if isRedirect(resp) { // to redirectURI, with an error
			_, err = code(resp, callback, state)
		} else {
			err = statusError(resp)
		}
		return Tokens{}, fmt.Errorf("idp: login: authorize: %w", err)
	}

	form := url.Values{
		formAuthRequestID: {page.Query().Get(formAuthRequestID)},
		formUsername:      {username},
		formPassword:      {password},
	}
	resp, err = do(ctx, &c, http.MethodPost, page.ResolveReference(&url.URL{Path: loginPath}).String(), form)
	if err != nil {
		return Tokens{}, fmt.Errorf("idp: login: sign in as %q: %w", username, err)
	}
	authCode, err := code(resp, callback, state)
	if err != nil {
		return Tokens{}, fmt.Errorf("idp: login: sign in as %q: %w", username, err)
	}

	tok, err := conf.Exchange(context.WithValue(ctx, oauth2.HTTPClient, &c), authCode, oauth2.VerifierOption(verifier))
	if err != nil {
		return Tokens{}, fmt.Errorf("idp: login: exchange code: %w", err)
	}
	idToken, _ := tok.Extra("id_token").(string)
	if idToken == "" {
		return Tokens{}, errors.New("idp: login: token response has no id_token")
	}
	return Tokens{IDToken: idToken, AccessToken: tok.AccessToken, Expiry: tok.Expiry}, nil
}

// do sends a request, with form as its body if not nil, and returns the
// response with its body read and closed.
func do(ctx context.Context, c *http.Client, method, target string, form url.Values) (*http.Response, error) {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return nil, err
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	// Only an error status's body is ever shown, and only its start.
	b, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	return resp, nil
}

// code returns the authorization code of resp, the redirect to callback
// that ends a successful sign-in.
func code(resp *http.Response, callback *url.URL, state string) (string, error) {
	if resp.StatusCode == http.StatusUnauthorized {
		return "", ErrInvalidCredentials
	}
	if !isRedirect(resp) {
		return "", statusError(resp)
	}
	loc, err := resp.Location()
	if err != nil {
		return "", err
	}
	if !isCallback(loc, callback) {
		return "", fmt.Errorf("redirected to %s, not to the redirect uri", loc.Redacted())
	}
	q := loc.Query()
	if e := q.Get("error"); e != "" {
		return "", fmt.Errorf("provider answered %s: %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return "", errors.New("redirect has the wrong state")
	}
	if q.Get("code") == "" {
		return "", errors.New("redirect has no code")
	}
	return q.Get("code"), nil
}

func isRedirect(resp *http.Response) bool {
	return resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != ""
}

// isCallback reports whether u is the redirect URI callback, ignoring the
// query.
func isCallback(u, callback *url.URL) bool {
	return u.Scheme == callback.Scheme && u.Host == callback.Host && u.Path == callback.Path
}

func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(resp.Body)
	return fmt.Errorf("%s %s: %s: %q", resp.Request.Method, resp.Request.URL.Path, resp.Status, strings.TrimSpace(string(b)))
}
