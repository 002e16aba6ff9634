package exchange

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"k8s.io/utils/clock"
)

// discoveryRetry is how long a failed discovery is remembered: requests in
// that time fail at once instead of each waiting for the issuer again.
const discoveryRetry = 5 * time.Second

// issuer verifies users' tokens from one OIDC issuer. Discovery runs on
// first use (a server starts while an issuer is down) and is retried after
// discoveryRetry; go-oidc caches the JWKS and refetches it when a token
// names an unknown kid.
type issuer struct {
	cfg     Issuer
	client  *http.Client
	timeout time.Duration
	clock   clock.PassiveClock

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	failed   time.Time
	failure  error
}

func newIssuer(cfg Issuer, timeout time.Duration, client *http.Client, clk clock.PassiveClock) *issuer {
	c := *client
	c.Timeout = timeout // bounds each discovery and JWKS fetch, whoever's context it runs under
	return &issuer{cfg: cfg, client: &c, timeout: timeout, clock: clk}
}

// errUnavailable marks an issuer that could not be reached.
var errUnavailable = errors.New("issuer unavailable")

func (is *issuer) get(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.verifier != nil {
		return is.verifier, nil
	}
	if now := is.clock.Now(); !is.failed.IsZero() && now.Sub(is.failed) < discoveryRetry {
		return nil, is.failure
	}
	ctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, is.client), is.timeout)
	defer cancel()
	p, err := oidc.NewProvider(ctx, is.cfg.URL)
	if err != nil {
		is.failed, is.failure = is.clock.Now(), fmt.Errorf("OIDC discovery at %s failed: %w: %w", is.cfg.URL, errUnavailable, err)
		return nil, is.failure
	}
	is.verifier = p.VerifierContext(oidc.ClientContext(context.Background(), is.client), &oidc.Config{
		SkipClientIDCheck:    true, // checked against every configured audience in verify
		SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256},
		Now:                  is.clock.Now,
	})
	return is.verifier, nil
}

// maxNotBeforeSkew is how far in the future a user token's nbf may be (go-oidc
// allows five minutes).
const maxNotBeforeSkew = 30 * time.Second

// verify checks a user's token: signature (RS256 or ES256, a key from the
// issuer's JWKS), iss, aud (one of the configured audiences), exp and nbf
// (from claims, the token's decoded payload).
func (is *issuer) verify(ctx context.Context, raw string, claims map[string]any) (*oidc.IDToken, error) {
	v, err := is.get(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, is.timeout)
	defer cancel()
	tok, err := v.Verify(ctx, raw)
	if err != nil {
		var ue *url.Error
		var ne net.Error
		if errors.As(err, &ue) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("issuer %s: %w: %w", is.cfg.URL, errUnavailable, err)
		}
		return nil, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "oidc: "))
	}
	if !slices.ContainsFunc(tok.Audience, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
		return nil, fmt.Errorf("audience %q is not one of the issuer's configured audiences", tok.Audience)
	}
	if nbf, ok := claims["nbf"].(float64); ok {
		if at := time.Unix(int64(nbf), 0); at.After(is.clock.Now().Add(maxNotBeforeSkew)) {
			return nil, fmt.Errorf("token is not valid before %s", at.UTC().Format(time.RFC3339))
		}
	}
	return tok, nil
}
