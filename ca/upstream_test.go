package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
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
		}, "expired at"},
		{"root expired, intermediate valid", func(t *testing.T) (string, string) {
			u := newTestUpstreamChain(t, t.TempDir(), now.Add(-48*time.Hour), now.Add(-time.Hour), now.Add(48*time.Hour))
			return u.certFile, u.keyFile
		}, "certificate 2 of 2 (CN=upstream root"},
		{"root expires before an x509-svid would", func(t *testing.T) (string, string) {
			u := newTestUpstreamChain(t, t.TempDir(), now.Add(-time.Hour), now.Add(30*time.Minute), now.Add(48*time.Hour))
			return u.certFile, u.keyFile
		}, "expires at " + now.Add(30*time.Minute).UTC().String()},
		{"root not valid yet", func(t *testing.T) (string, string) {
			u := newTestUpstreamChain(t, t.TempDir(), now.Add(time.Hour), now.Add(48*time.Hour), now.Add(48*time.Hour))
			return u.certFile, u.keyFile
		}, "is not valid before"},
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

// TestAttackLeafOutlivesUpstreamRoot: the upstream bundle is [intermediate
// valid 48h, root valid 2h], the cross-signed-root pattern that broke clients
// when an old root expired in 2021. Nothing the authority makes may outlive
// the root: not the slot's intermediate, not a 4h X509-SVID, whose chain
// verifies until its last second. The slot is shortened to end with the root,
// so rotation prepares and activates the next one, from the upstream CA on
// disk, before the root expires. The start warns, and the expiry is exposed
// for the metrics.
func TestAttackLeafOutlivesUpstreamRoot(t *testing.T) {
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	dir := t.TempDir()
	up := newTestUpstreamChain(t, dir, now.Add(-time.Hour), now.Add(2*time.Hour), now.Add(48*time.Hour))
	rootExpiry := up.root.NotAfter
	var logs bytes.Buffer
	e := newTestEnvAt(t, now, func(c *Config) {
		c.UpstreamCertFile, c.UpstreamKeyFile = up.certFile, up.keyFile
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	id := mustID(t, "spiffe://example.org/w")

	x1 := activeSlot(t, e.a, KindX509)
	assert.False(t, x1.cert.NotAfter.After(rootExpiry), "slot intermediate expires at %s, after the upstream root (%s)", x1.cert.NotAfter, rootExpiry)
	assert.Equal(t, rootExpiry, x1.notAfter, "the slot ends with the upstream root")

	chain, err := e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: newKey(t).Public(), ID: id, TTL: 4 * time.Hour})
	require.NoError(t, err)
	leaf := chain[0]
	assert.False(t, leaf.NotAfter.After(rootExpiry), "leaf expires at %s, after the upstream root (%s)", leaf.NotAfter, rootExpiry)
	_, _, err = x509svid.Verify(chain, e.a.Bundle(), x509svid.WithTime(leaf.NotAfter.Add(-time.Second)))
	require.NoError(t, err, "the chain verifies until the leaf expires")

	// Warned at start, naming the root; exposed for the metrics.
	assert.Contains(t, logs.String(), `"msg":"ca upstream chain expires within CATTL; x509 keys end with it"`)
	assert.Contains(t, logs.String(), `"subject":"`+up.root.Subject.String()+`"`)
	assert.Contains(t, logs.String(), `"not_after":"`+rootExpiry.UTC().Format(time.RFC3339)+`"`)
	assert.Equal(t, rootExpiry, e.a.UpstreamNotAfter())

	// The operator installs a new upstream CA; rotation picks it up at half
	// of the shortened slot's life, and hands over before the root expires.
	up2 := newTestUpstreamChain(t, dir, now.Add(-time.Hour), now.Add(72*time.Hour), now.Add(72*time.Hour))
	require.Equal(t, x1.createdAt.Add(rootExpiry.Sub(x1.createdAt)/2), x1.prepareAt())
	e.clock.SetTime(x1.prepareAt())
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	x2 := preparedSlot(t, e.a, KindX509)
	require.NoError(t, x2.cert.CheckSignatureFrom(up2.certs[0]), "the new upstream CA signs")
	assert.Equal(t, up2.root.NotAfter, e.a.UpstreamNotAfter())

	handover := e.a.activateAt(x1, x2)
	require.True(t, handover.Before(rootExpiry), "handover at %s, root expires at %s", handover, rootExpiry)
	e.clock.SetTime(handover)
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	chain, err = e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: newKey(t).Public(), ID: id, TTL: 4 * time.Hour})
	require.NoError(t, err)
	_, _, err = x509svid.Verify(chain, e.a.Bundle(), x509svid.WithTime(rootExpiry.Add(time.Hour)))
	require.NoError(t, err, "SVIDs issued after the handover verify once the old root has expired")

	// The old root leaves the bundle when it expires.
	e.clock.SetTime(rootExpiry)
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusActive)
	auth := e.a.Bundle().X509Authorities()
	require.Len(t, auth, 1)
	assert.Equal(t, up2.root.Raw, auth[0].Raw)
}

// TestAttackLeafOutlivesUpstreamRootAfterUpgrade: a slot made before the cap
// existed, recorded in the journal with an intermediate that outlives the
// upstream root (here a root renewed with a shorter validity). After a
// restart the slot ends with the root, and so do the SVIDs it signs.
func TestAttackLeafOutlivesUpstreamRootAfterUpgrade(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	up := newTestUpstreamChain(t, t.TempDir(), now.Add(-time.Hour), now.Add(48*time.Hour), now.Add(48*time.Hour))
	e := newTestEnvAt(t, now, func(c *Config) {
		c.UpstreamCertFile, c.UpstreamKeyFile = up.certFile, up.keyFile
	})
	require.WithinDuration(t, now.Add(DefaultCATTL), caOf(t, e.a).NotAfter, 0)

	shortRoot := up.reissueRoot(t, now.Add(2*time.Hour))
	replaceJournalAnchor(t, e.journal, shortRoot)
	var certPEM []byte
	for _, c := range []*x509.Certificate{up.certs[0], shortRoot} {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	require.NoError(t, os.WriteFile(up.certFile, certPEM, 0o644))
	e.restart(t)

	x := activeSlot(t, e.a, KindX509)
	assert.WithinDuration(t, now.Add(DefaultCATTL), x.cert.NotAfter, 0, "the journal's intermediate")
	assert.Equal(t, shortRoot.NotAfter, x.notAfter, "the slot ends with the upstream root")
	chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{
		PublicKey: newKey(t).Public(), ID: mustID(t, "spiffe://example.org/w"), TTL: 4 * time.Hour,
	})
	require.NoError(t, err)
	leaf := chain[0]
	assert.False(t, leaf.NotAfter.After(shortRoot.NotAfter), "leaf expires at %s, after the upstream root (%s)", leaf.NotAfter, shortRoot.NotAfter)
	_, _, err = x509svid.Verify(chain, e.a.Bundle(), x509svid.WithTime(leaf.NotAfter.Add(-time.Second)))
	require.NoError(t, err)
}

// replaceJournalAnchor rewrites the journal so that every x509 slot's
// upstream chain ends with root.
func replaceJournalAnchor(t *testing.T, j *memJournal, root *x509.Certificate) {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	var doc journalDoc
	require.NoError(t, json.Unmarshal(j.journal, &doc))
	for i := range doc.Slots {
		if up := doc.Slots[i].UpstreamDER; len(up) > 0 {
			up[len(up)-1] = root.Raw
		}
	}
	data, err := json.Marshal(doc)
	require.NoError(t, err)
	j.journal = data
}

// TestUpstreamRootNotReplaced: the upstream root expires in 2h and nobody
// replaces it. At half of the shortened slot's life no successor fits before
// the root expires (it would end within X509SVIDTTL), so the rotation step
// fails naming the root; the active key keeps signing SVIDs that end with
// the root.
func TestUpstreamRootNotReplaced(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	up := newTestUpstreamChain(t, t.TempDir(), now.Add(-time.Hour), now.Add(2*time.Hour), now.Add(48*time.Hour))
	e := newTestEnvAt(t, now, func(c *Config) {
		c.UpstreamCertFile, c.UpstreamKeyFile = up.certFile, up.keyFile
	})
	x := activeSlot(t, e.a, KindX509)
	e.clock.SetTime(x.prepareAt())
	_, err := e.a.tick(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "("+up.root.Subject.String()+") expires at "+up.root.NotAfter.String())
	assertStatuses(t, e.a, KindX509, StatusActive)

	chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{
		PublicKey: newKey(t).Public(), ID: mustID(t, "spiffe://example.org/w"), TTL: 4 * time.Hour,
	})
	require.NoError(t, err)
	assert.Equal(t, up.root.NotAfter, chain[0].NotAfter)
}
