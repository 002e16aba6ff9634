package ca

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		return Config{TrustDomain: testTD, KeyDir: t.TempDir(), Journal: &memJournal{}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string // substrings of the error; none: valid
	}{
		{"defaults", func(*Config) {}, nil},
		{"short CATTL adapts default TTLs", func(c *Config) { c.CATTL = time.Hour }, nil},
		{"x509 ttl at CATTL/6", func(c *Config) { c.X509SVIDTTL = 4 * time.Hour }, nil},
		{"x509 ttl above CATTL/6", func(c *Config) { c.X509SVIDTTL = 5 * time.Hour },
			[]string{"X509SVIDTTL", "5h0m0s exceeds CATTL/6 (4h0m0s)", "must outlive every SVID it signs", "5/6"}},
		{"jwt ttl above CATTL/6", func(c *Config) { c.CATTL = 6 * time.Hour; c.JWTSVIDTTL = 2 * time.Hour },
			[]string{"JWTSVIDTTL", "exceeds CATTL/6 (1h0m0s)"}},
		{"explicit x509 ttl with short CATTL", func(c *Config) { c.CATTL = time.Hour; c.X509SVIDTTL = time.Hour },
			[]string{"X509SVIDTTL", "exceeds CATTL/6 (10m0s)"}},
		{"refresh hint too long", func(c *Config) { c.RefreshHint = 5 * time.Hour }, []string{"RefreshHint", "exceeds CATTL/6"}},
		{"negative ttl", func(c *Config) { c.X509SVIDTTL = -time.Second }, []string{"X509SVIDTTL", "must be positive"}},
		{"negative CATTL", func(c *Config) { c.CATTL = -time.Hour }, []string{"CATTL", "must be positive"}},
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, []string{"TrustDomain", "required"}},
		{"no key dir", func(c *Config) { c.KeyDir = "" }, []string{"KeyDir", "required"}},
		{"no journal", func(c *Config) { c.Journal = nil }, []string{"Journal", "required"}},
		{"upstream cert only", func(c *Config) { c.UpstreamCertFile = "x.pem" }, []string{"set both or neither"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mod(&cfg)
			_, err := New(context.Background(), cfg)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidConfig)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestNewWritesKeysPrivately(t *testing.T) {
	e := newTestEnv(t, nil)
	fi, err := os.Stat(e.cfg.KeyDir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	entries, err := os.ReadDir(e.cfg.KeyDir)
	require.NoError(t, err)
	require.Len(t, entries, 2, "one x509 and one jwt key")
	for _, ent := range entries {
		fi, err := ent.Info()
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), ent.Name())
	}
	for _, k := range []Kind{KindX509, KindJWT} {
		s := activeSlot(t, e.a, k)
		assert.FileExists(t, filepath.Join(e.cfg.KeyDir, s.keyFile))
	}
	// The journal names key files but holds no key material.
	assert.NotContains(t, string(e.journal.journal), "PRIVATE")
}

func TestRestartResumesSameKeys(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	ca := caOf(t, e.a)
	kid := activeID(t, e.a, KindJWT)
	slots := e.a.Slots()
	bundle := e.a.Bundle()
	key := newKey(t)
	id := mustID(t, "spiffe://example.org/w")
	before, err := e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.NoError(t, err)
	saves := e.journal.saves

	e.clock.Step(time.Hour)
	e.restart(t)

	assert.Equal(t, ca.Raw, caOf(t, e.a).Raw, "same CA certificate")
	assert.Equal(t, kid, activeID(t, e.a, KindJWT), "same kid")
	assert.Equal(t, slots, e.a.Slots())
	assert.True(t, bundle.Equal(e.a.Bundle()), "same bundle, same sequence")
	assert.Equal(t, saves, e.journal.saves, "nothing to persist on a plain restart")

	// The restarted authority signs with the same keys: its SVIDs and the
	// earlier ones verify against the same bundle.
	after, err := e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: key.Public(), ID: id})
	require.NoError(t, err)
	for _, chain := range [][]*x509.Certificate{before, after} {
		_, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(e.clock.Now()))
		require.NoError(t, err)
	}
	token, _, err := e.a.SignJWTSVID(ctx, JWTSVIDParams{ID: id, Audience: []string{"x"}})
	require.NoError(t, err)
	verifyJWT(t, e.a, token, e.clock.Now())
}

func TestRestartRefusesOtherTrustDomain(t *testing.T) {
	e := newTestEnv(t, nil)
	cfg := e.cfg
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("other.org")
	_, err := New(context.Background(), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `journal: written for trust domain "example.org", configured "other.org"`)
}

func TestRestartRefusesMissingOrForeignKey(t *testing.T) {
	e := newTestEnv(t, nil)
	s := activeSlot(t, e.a, KindX509)
	path := filepath.Join(e.cfg.KeyDir, s.keyFile)
	orig, err := os.ReadFile(path)
	require.NoError(t, err)

	// A key file replaced by another key is refused.
	other := activeSlot(t, e.a, KindJWT)
	foreign, err := os.ReadFile(filepath.Join(e.cfg.KeyDir, other.keyFile))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, foreign, 0o600))
	_, err = New(context.Background(), e.cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does not match x509 slot")

	require.NoError(t, os.Remove(path))
	_, err = New(context.Background(), e.cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ca: load key of x509 slot")

	require.NoError(t, os.WriteFile(path, orig, 0o600))
	e.restart(t)
}

func TestSlots(t *testing.T) {
	e := newTestEnv(t, nil)
	now := e.clock.Now()
	slots := e.a.Slots()
	require.Len(t, slots, 2)
	assert.Equal(t, KindX509, slots[0].Kind)
	assert.Equal(t, KindJWT, slots[1].Kind)
	for _, s := range slots {
		assert.Equal(t, StatusActive, s.Status)
		assert.NotEmpty(t, s.ID)
		assert.True(t, s.ActivatedAt.Equal(now))
		assert.WithinDuration(t, now.Add(24*time.Hour), s.NotAfter, time.Second)
	}
	assert.Equal(t, caOf(t, e.a).NotBefore, slots[0].NotBefore)
}

func TestRestartRemovesOrphanKeys(t *testing.T) {
	e := newTestEnv(t, nil)
	for _, n := range []string{"x509-orphan.pem", "jwt-orphan.pem", ".tmp-jwt-x.pem-123", "README"} {
		require.NoError(t, os.WriteFile(filepath.Join(e.cfg.KeyDir, n), []byte("x"), 0o600))
	}
	e.restart(t)
	entries, err := os.ReadDir(e.cfg.KeyDir)
	require.NoError(t, err)
	var names []string
	for _, ent := range entries {
		names = append(names, ent.Name())
	}
	assert.Len(t, names, 3, "two keys and README: %v", names)
	assert.Contains(t, names, "README")
	assert.Contains(t, names, activeSlot(t, e.a, KindX509).keyFile)
	assert.Contains(t, names, activeSlot(t, e.a, KindJWT).keyFile)
}
