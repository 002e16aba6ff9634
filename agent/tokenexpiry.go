package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/logkey"
)

// DefaultTokenCheckInterval is TokenExpiryConfig.Interval's default.
const DefaultTokenCheckInterval = 30 * time.Second

// tokenAlgorithms are the signature algorithms a service-account token may
// carry; the token is only read, not verified.
var tokenAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// TokenExpiryConfig configures a TokenExpiry.
type TokenExpiryConfig struct {
	// Path is the projected service-account token file (the kubelet
	// rotates it in place).
	Path string
	// Interval is how often the file is read again. Default
	// DefaultTokenCheckInterval.
	Interval time.Duration
	Metrics  *Metrics
	// Clock default: real. Logger default: discard.
	Clock  clock.WithTicker
	Logger *slog.Logger
}

// TokenExpiry follows when the token the agent attests with expires: the
// exp claim of the JWT in a file, read without verifying it (the server
// verifies the token; the agent only shows when it will no longer be able
// to attest with it). It sets tally_agent_token_expiry_timestamp_seconds.
// Safe for concurrent use; Run reads the file.
type TokenExpiry struct {
	cfg      TokenExpiryConfig
	notAfter atomic.Int64 // Unix seconds; 0 unknown
}

// NewTokenExpiry returns a TokenExpiry that knows nothing until Run read
// the file.
func NewTokenExpiry(cfg TokenExpiryConfig) *TokenExpiry {
	if cfg.Interval == 0 {
		cfg.Interval = DefaultTokenCheckInterval
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &TokenExpiry{cfg: cfg}
}

// NotAfter is the exp of the token last read; zero if none was read, or
// the token has no exp.
func (t *TokenExpiry) NotAfter() time.Time {
	if s := t.notAfter.Load(); s != 0 {
		return time.Unix(s, 0)
	}
	return time.Time{}
}

// Run reads the token at once and then every Interval until ctx is done,
// then returns nil. A file it cannot read or parse is logged (once until
// it can again) and keeps the expiry last read: that token still expires
// then.
func (t *TokenExpiry) Run(ctx context.Context) error {
	var failing bool
	tick := t.cfg.Clock.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	for {
		exp, err := readTokenExpiry(t.cfg.Path)
		switch {
		case err != nil && !failing:
			t.cfg.Logger.Warn("reading the attestation token's expiry", logkey.Path, t.cfg.Path, logkey.Error, err)
			failing = true
		case err == nil:
			failing = false
			t.notAfter.Store(unixOrZero(exp))
			setTime(t.cfg.Metrics.agentTokenExpiry, exp)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		}
	}
}

// readTokenExpiry is the exp claim of the JWT in path, unverified; zero if
// it has none. Errors never contain the token.
func readTokenExpiry(path string) (time.Time, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, fmt.Errorf("agent: token: %w", err)
	}
	tok, err := jwt.ParseSigned(string(bytes.TrimSpace(raw)), tokenAlgorithms)
	if err != nil {
		return time.Time{}, errors.New("agent: token: not a signed JWT")
	}
	var claims jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return time.Time{}, errors.New("agent: token: unreadable claims")
	}
	if claims.Expiry == nil {
		return time.Time{}, nil
	}
	return claims.Expiry.Time(), nil
}
