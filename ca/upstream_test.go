package ca

import (
	"context"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUpstreamMode(t *testing.T) {
	for _, tc := range []struct {
		name             string
		withIntermediate bool
		wantChain        int
	}{
		{"root", false, 2},
		{"intermediate and root", true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now().Truncate(time.Second)
			up := newTestUpstream(t, t.TempDir(), now.Add(-time.Hour), now.Add(365*24*time.Hour), tc.withIntermediate)
			e := newTestEnvAt(t, now, func(c *Config) {
				c.UpstreamCertFile, c.UpstreamKeyFile = up.certFile, up.keyFile
			})

			// The bundle holds the upstream root only.
			auth := e.a.Bundle().X509Authorities()
			require.Len(t, auth, 1)
			assert.Equal(t, up.root.Raw, auth[0].Raw)

			key := newKey(t)
			id := mustID(t, "spiffe://example.org/w")
			chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: key.Public(), ID: id})
			require.NoError(t, err)
			require.Len(t, chain, tc.wantChain, "leaf, the authority's intermediate, the upstream intermediates")
			inter := chain[1]
			assert.Equal(t, caOf(t, e.a).Raw, inter.Raw)
			checkSigningCert(t, inter)
			require.NoError(t, inter.CheckSignatureFrom(up.certs[0]))
			if tc.withIntermediate {
				assert.Equal(t, up.certs[0].Raw, chain[2].Raw)
			}

			gotID, _, err := x509svid.Verify(chain, e.a.Bundle(), x509svid.WithTime(e.clock.Now()))
			require.NoError(t, err)
			assert.Equal(t, id, gotID)
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			require.NoError(t, err)
			_, err = x509svid.ParseRaw(concatDER(chain), keyDER)
			require.NoError(t, err)

			// A restart keeps the intermediate.
			e.restart(t)
			assert.Equal(t, inter.Raw, caOf(t, e.a).Raw)
		})
	}
}

// TestX509AndJWTRotateIndependently: an upstream CA that expires in 12h caps
// the X.509 keys' lifetime, so they rotate on their own schedule while the
// JWT key (CATTL 24h) stays put. The upstream CA is also replaced on disk and
// picked up by the next X.509 key without a restart.
func TestX509AndJWTRotateIndependently(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	dir := t.TempDir()
	up1 := newTestUpstream(t, dir, now.Add(-time.Hour), now.Add(12*time.Hour), false)
	e := newTestEnvAt(t, now, func(c *Config) {
		c.UpstreamCertFile, c.UpstreamKeyFile = up1.certFile, up1.keyFile
	})
	t0 := e.clock.Now()
	x1 := activeSlot(t, e.a, KindX509)
	j1 := activeSlot(t, e.a, KindJWT)
	assert.WithinDuration(t, t0.Add(12*time.Hour), x1.notAfter, 0, "capped by the upstream CA")
	assert.WithinDuration(t, t0.Add(24*time.Hour), j1.notAfter, time.Second)

	// The upstream CA is rotated on disk.
	up2 := newTestUpstream(t, dir, now.Add(-time.Hour), now.Add(72*time.Hour), false)

	// 1/2 of the X.509 key's life: only X.509 prepares, under the new root.
	e.clock.SetTime(t0.Add(6 * time.Hour))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	assertStatuses(t, e.a, KindJWT, StatusActive)
	requireSeq(t, e, 2)
	auth := e.a.Bundle().X509Authorities()
	require.Len(t, auth, 2)
	assert.Equal(t, up1.root.Raw, auth[0].Raw)
	assert.Equal(t, up2.root.Raw, auth[1].Raw)

	// 5/6: X.509 hands over; JWT unchanged.
	e.clock.SetTime(t0.Add(10 * time.Hour))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	assertStatuses(t, e.a, KindJWT, StatusActive)
	assert.Equal(t, j1.id, activeID(t, e.a, KindJWT))
	chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: newKey(t).Public(), ID: mustID(t, "spiffe://example.org/w")})
	require.NoError(t, err)
	require.NoError(t, chain[1].CheckSignatureFrom(up2.root))

	// 12h: the first X.509 key and the old root leave; JWT reaches 1/2 and prepares.
	e.clock.SetTime(t0.Add(12 * time.Hour))
	e.tick(t)
	requireSeq(t, e, 3)
	auth = e.a.Bundle().X509Authorities()
	require.Len(t, auth, 1)
	assert.Equal(t, up2.root.Raw, auth[0].Raw)
	assertStatuses(t, e.a, KindJWT, StatusActive, StatusPrepared)
}

func TestUpstreamRefused(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	for _, tc := range []struct {
		name string
		make func(t *testing.T) (certFile, keyFile string)
		want string
	}{
		{"expired", func(t *testing.T) (string, string) {
			u := newTestUpstream(t, t.TempDir(), now.Add(-48*time.Hour), now.Add(-time.Hour), false)
			return u.certFile, u.keyFile
		}, "expires at"},
		{"key mismatch", func(t *testing.T) (string, string) {
			a := newTestUpstream(t, t.TempDir(), now.Add(-time.Hour), now.Add(time.Hour*48), false)
			b := newTestUpstream(t, t.TempDir(), now.Add(-time.Hour), now.Add(time.Hour*48), false)
			return a.certFile, b.keyFile
		}, "does not match"},
		{"missing file", func(t *testing.T) (string, string) {
			return t.TempDir() + "/nope.crt", t.TempDir() + "/nope.key"
		}, "upstream certificate"},
		{"garbage cert", func(t *testing.T) (string, string) {
			u := newTestUpstream(t, t.TempDir(), now.Add(-time.Hour), now.Add(time.Hour*48), false)
			require.NoError(t, os.WriteFile(u.certFile, []byte("garbage"), 0o600))
			return u.certFile, u.keyFile
		}, "upstream certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certFile, keyFile := tc.make(t)
			_, err := New(context.Background(), Config{
				TrustDomain: testTD, KeyDir: t.TempDir(), Journal: &memJournal{},
				UpstreamCertFile: certFile, UpstreamKeyFile: keyFile,
			})
			require.ErrorIs(t, err, ErrInvalidConfig)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
