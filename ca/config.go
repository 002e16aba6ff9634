package ca

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultCATTL       = 24 * time.Hour
	DefaultX509SVIDTTL = time.Hour
	DefaultJWTSVIDTTL  = 5 * time.Minute
	// maxDefaultRefreshHint caps the default bundle refresh hint (CATTL/10).
	maxDefaultRefreshHint = 5 * time.Minute
)

// JournalStore persists the authority's journal (key slots) and the trust
// bundle it publishes. It is the part of store.Store the authority needs.
// Load methods return an error wrapping store.ErrNotFound on a new store.
type JournalStore interface {
	LoadJournal(ctx context.Context) ([]byte, error)
	SaveJournal(ctx context.Context, journal []byte) error
	LoadBundle(ctx context.Context) ([]byte, error)
	SaveBundle(ctx context.Context, bundle []byte) error
}

// Config configures an Authority. Zero durations take the documented default.
type Config struct {
	// TrustDomain the authority signs for. Required.
	TrustDomain spiffeid.TrustDomain
	// KeyDir holds the private keys of the PREPARED and ACTIVE slots as PEM
	// files (mode 0600). It is created with mode 0700 if missing. Files named
	// like the authority's keys (x509-*.pem, jwt-*.pem) that the journal does
	// not reference are deleted at startup. Required.
	KeyDir string
	// Journal persists the key slots and the bundle. Required.
	Journal JournalStore

	// CATTL is the lifetime of every CA key (X.509 and JWT). Default 24h.
	CATTL time.Duration
	// X509SVIDTTL is the default X509-SVID lifetime. Default min(1h, CATTL/6);
	// at most CATTL/6.
	X509SVIDTTL time.Duration
	// JWTSVIDTTL is the default JWT-SVID lifetime. Default min(5m, CATTL/6);
	// at most CATTL/6.
	JWTSVIDTTL time.Duration
	// RefreshHint is published in the bundle (spiffe_refresh_hint). Default
	// min(CATTL/10, 5m); at most CATTL/6 so that consumers see a prepared key
	// well before it signs anything.
	RefreshHint time.Duration

	// UpstreamCertFile and UpstreamKeyFile, if set (both or neither), name an
	// upstream CA: a PEM file with the upstream CA certificate first followed
	// by its chain, the last certificate being the trust anchor published in
	// the bundle; and the PEM private key of the first certificate. The
	// authority's X.509 keys then get intermediate certificates signed by it.
	// The files are read again every time a new X.509 key is made, so a
	// rotated upstream CA is picked up without a restart. An X.509 key, and
	// every SVID it signs, ends no later than the first certificate of the
	// chain to expire; a key cut short that way rotates on its actual
	// lifetime (a warning is logged and UpstreamNotAfter reports the
	// expiry). A chain with a certificate not yet valid, expired, or
	// expiring within X509SVIDTTL is refused.
	UpstreamCertFile string
	UpstreamKeyFile  string
	// StepCA, if set, is an upstream step-ca that signs the X.509 keys'
	// intermediate certificates instead (not with UpstreamCertFile). Its
	// root is the bundle's anchor. It is first contacted when an X.509 key is
	// made; while it cannot be reached the current keys keep signing and the
	// rotation step is retried with backoff.
	StepCA *StepCA

	// Clock drives validity times and rotation. Default: the real clock.
	Clock clock.Clock
	// Logger receives one line per rotation step. Default: discard.
	Logger *slog.Logger
}

// DefaultSVIDTTL is the lifetime of an SVID of kind when none is
// configured: DefaultX509SVIDTTL or DefaultJWTSVIDTTL, but at most a sixth of
// caTTL, so that no SVID outlives the key that signed it.
func DefaultSVIDTTL(kind Kind, caTTL time.Duration) time.Duration {
	if kind == KindJWT {
		return min(DefaultJWTSVIDTTL, caTTL/6)
	}
	return min(DefaultX509SVIDTTL, caTTL/6)
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.CATTL == 0 {
		c.CATTL = DefaultCATTL
	}
	if c.X509SVIDTTL == 0 {
		c.X509SVIDTTL = DefaultSVIDTTL(KindX509, c.CATTL)
	}
	if c.JWTSVIDTTL == 0 {
		c.JWTSVIDTTL = DefaultSVIDTTL(KindJWT, c.CATTL)
	}
	if c.RefreshHint == 0 {
		c.RefreshHint = min(c.CATTL/10, maxDefaultRefreshHint)
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem with c, after defaults are applied.
// Errors wrap ErrInvalidConfig and name the field.
func (c Config) Validate() error {
	c = c.withDefaults()
	keyed := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, key, fmt.Sprintf(format, args...))
	}
	switch {
	case c.TrustDomain.IsZero():
		return keyed("TrustDomain", "required")
	case c.KeyDir == "":
		return keyed("KeyDir", "required")
	case c.Journal == nil:
		return keyed("Journal", "required")
	case c.CATTL < 0:
		return keyed("CATTL", "must be positive, got %s", c.CATTL)
	case c.X509SVIDTTL <= 0:
		return keyed("X509SVIDTTL", "must be positive, got %s", c.X509SVIDTTL)
	case c.JWTSVIDTTL <= 0:
		return keyed("JWTSVIDTTL", "must be positive, got %s", c.JWTSVIDTTL)
	case c.RefreshHint <= 0:
		return keyed("RefreshHint", "must be positive, got %s", c.RefreshHint)
	case (c.UpstreamCertFile == "") != (c.UpstreamKeyFile == ""):
		return keyed("UpstreamCertFile/UpstreamKeyFile", "set both or neither")
	case c.StepCA != nil && c.UpstreamCertFile != "":
		return keyed("StepCA", "an upstream step-ca or upstream files, not both")
	}
	if c.StepCA != nil {
		if err := c.StepCA.Validate(); err != nil {
			return keyed("StepCA", "%v", err)
		}
	}
	maxTTL := c.CATTL / 6
	for _, f := range []struct {
		key string
		ttl time.Duration
	}{{"X509SVIDTTL", c.X509SVIDTTL}, {"JWTSVIDTTL", c.JWTSVIDTTL}} {
		if f.ttl > maxTTL {
			return keyed(f.key, "%s exceeds CATTL/6 (%s): a CA key must outlive every SVID it signs, "+
				"and it stops signing at 5/6 of its lifetime (CATTL %s)", f.ttl, maxTTL, c.CATTL)
		}
	}
	if c.RefreshHint > maxTTL {
		return keyed("RefreshHint", "%s exceeds CATTL/6 (%s): consumers must fetch a new key "+
			"well before it is activated", c.RefreshHint, maxTTL)
	}
	return nil
}

// maxSVIDTTL is the longest TTL a caller may ask for.
func (c Config) maxSVIDTTL() time.Duration { return c.CATTL / 6 }
