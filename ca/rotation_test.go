package ca

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRotationEndToEnd drives both kinds through PREPARED, ACTIVE and OLD
// with the fake clock (CATTL 24h).
func TestRotationEndToEnd(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	t0 := e.clock.Now()
	key := newKey(t)
	id := mustID(t, "spiffe://example.org/w")
	x1, j1 := caOf(t, e.a), activeID(t, e.a, KindJWT)
	requireSeq(t, e, 1)

	signX509 := func(ttl time.Duration) []*x509.Certificate {
		chain, err := e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: key.Public(), ID: id, TTL: ttl})
		require.NoError(t, err)
		return chain
	}
	signJWT := func(ttl time.Duration) string {
		token, _, err := e.a.SignJWTSVID(ctx, JWTSVIDParams{ID: id, Audience: []string{"x"}, TTL: ttl})
		require.NoError(t, err)
		return token
	}
	kidOf := func(token string) string {
		verifyJWT(t, e.a, token, e.clock.Now())
		return jwtKID(t, token)
	}

	// Just before 1/2: nothing happens.
	e.clock.SetTime(t0.Add(12*time.Hour - time.Second))
	e.tick(t)
	requireSeq(t, e, 1)
	assert.Len(t, e.a.Slots(), 2)

	// At 1/2: a new key of each kind is prepared and published at once,
	// while the old ones keep signing.
	e.clock.SetTime(t0.Add(12 * time.Hour))
	e.tick(t)
	requireSeq(t, e, 2)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	assertStatuses(t, e.a, KindJWT, StatusActive, StatusPrepared)
	x2 := preparedSlot(t, e.a, KindX509)
	j2 := preparedSlot(t, e.a, KindJWT)
	b := e.a.Bundle()
	assert.True(t, b.HasX509Authority(x2.cert), "prepared CA published before it signs")
	assert.True(t, b.HasX509Authority(x1))
	assert.True(t, b.HasJWTAuthority(j2.id), "prepared kid published before it signs")
	assert.True(t, b.HasJWTAuthority(j1))
	assertStored(t, e, b)
	assert.Equal(t, x1.SubjectKeyId, signX509(0)[0].AuthorityKeyId, "still signed by the first CA")
	assert.Equal(t, j1, kidOf(signJWT(0)), "still signed by the first JWT key")

	// Just before 5/6, sign with the longest TTL: these outlive the handover.
	e.clock.SetTime(t0.Add(20*time.Hour - time.Second))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	lateSVID := signX509(4 * time.Hour)
	lateToken := signJWT(4 * time.Hour)
	assert.Equal(t, x1.SubjectKeyId, lateSVID[0].AuthorityKeyId)

	// At 5/6: the prepared keys become active, the previous ones old. The
	// bundle content is unchanged, so is its sequence.
	e.clock.SetTime(t0.Add(20 * time.Hour))
	e.tick(t)
	requireSeq(t, e, 2)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	assertStatuses(t, e.a, KindJWT, StatusOld, StatusActive)
	assert.Equal(t, x2.cert.SubjectKeyId, signX509(0)[0].AuthorityKeyId, "now signed by the second CA")
	assert.Equal(t, j2.id, kidOf(signJWT(0)), "now signed by the second JWT key")
	for _, s := range []*slot{x2, j2} {
		assert.FileExists(t, filepath.Join(e.cfg.KeyDir, s.keyFile))
	}
	assertKeyFiles(t, e, 2) // the old keys' files are deleted

	// What the old keys signed still verifies until it expires.
	e.clock.SetTime(t0.Add(24*time.Hour - 2*time.Second))
	e.tick(t)
	_, _, err := x509svid.Verify(lateSVID, e.a.Bundle(), x509svid.WithTime(e.clock.Now()))
	require.NoError(t, err)
	verifyJWT(t, e.a, lateToken, e.clock.Now())

	// At their NotAfter the old keys leave the bundle; the second keys reach
	// 1/2 at the same moment, so their successors are prepared: one change.
	e.clock.SetTime(t0.Add(24 * time.Hour))
	e.tick(t)
	requireSeq(t, e, 3)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	assertStatuses(t, e.a, KindJWT, StatusActive, StatusPrepared)
	b = e.a.Bundle()
	assert.False(t, b.HasX509Authority(x1))
	assert.False(t, b.HasJWTAuthority(j1))
	assert.Len(t, b.X509Authorities(), 2)
	assert.Len(t, b.JWTAuthorities(), 2)
	assertStored(t, e, b)

	// A restart resumes in the middle of a rotation.
	slots := e.a.Slots()
	e.restart(t)
	assert.Equal(t, slots, e.a.Slots())
	requireSeq(t, e, 3)
}

// TestNextStep checks when Run will wake up.
func TestNextStep(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.CATTL = 6 * time.Minute })
	t0 := e.clock.Now()
	next, err := e.a.tick(context.Background())
	require.NoError(t, err)
	assert.WithinDuration(t, t0.Add(time.Minute), next, 0, "capped at one minute")

	e.clock.SetTime(t0.Add(3 * time.Minute))
	e.tick(t) // prepare
	e.clock.SetTime(t0.Add(4*time.Minute + 45*time.Second))
	next, err = e.a.tick(context.Background())
	require.NoError(t, err)
	assert.WithinDuration(t, t0.Add(5*time.Minute), next, 0, "activation at 5/6")
}

// TestRunRotatesWithFakeClock runs the real loop: stepping the clock past 1/2
// makes it publish a prepared key.
func TestRunRotatesWithFakeClock(t *testing.T) {
	e := newTestEnv(t, nil)
	updates, cancel := e.a.SubscribeBundle()
	defer cancel()
	<-updates

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.a.Run(ctx) }()

	require.Eventually(t, e.clock.HasWaiters, 10*time.Second, time.Millisecond, "run waits on the clock")
	e.clock.Step(12 * time.Hour)
	var b *spiffebundle.Bundle
	select {
	case b = <-updates:
	case <-time.After(10 * time.Second):
		t.Fatal("no bundle update after stepping past 1/2")
	}
	seq, _ := b.SequenceNumber()
	assert.Equal(t, uint64(2), seq)
	assert.Len(t, b.X509Authorities(), 2)

	stop()
	require.NoError(t, <-done)
}

// TestRotationFailureChangesNothing: when the journal cannot be saved, the
// step is not applied and its key files are removed; it succeeds later.
func TestRotationFailureChangesNothing(t *testing.T) {
	e := newTestEnv(t, nil)
	slots := e.a.Slots()
	bundle := e.a.Bundle()

	e.clock.Step(12 * time.Hour)
	e.journal.setFail(errInjected)
	_, err := e.a.tick(context.Background())
	require.ErrorIs(t, err, errInjected)
	assert.Equal(t, slots, e.a.Slots())
	assert.True(t, bundle.Equal(e.a.Bundle()))
	assertKeyFiles(t, e, 2)

	e.journal.setFail(nil)
	e.tick(t)
	requireSeq(t, e, 2)
	assertKeyFiles(t, e, 4)
}

// TestCatchUpAfterDowntime: New performs what fell due while stopped.
func TestCatchUpAfterDowntime(t *testing.T) {
	t.Run("prepare late, activate after two refresh hints", func(t *testing.T) {
		e := newTestEnv(t, nil)
		x1 := caOf(t, e.a)
		e.clock.Step(21 * time.Hour) // past 5/6, nothing prepared
		e.restart(t)
		requireSeq(t, e, 2)
		assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
		assert.Equal(t, x1.Raw, caOf(t, e.a).Raw)

		e.clock.Step(10*time.Minute - time.Second)
		e.tick(t)
		assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
		e.clock.Step(time.Second)
		e.tick(t)
		assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	})
	t.Run("everything expired", func(t *testing.T) {
		e := newTestEnv(t, nil)
		x1 := caOf(t, e.a)
		e.clock.Step(30 * time.Hour)
		e.restart(t)
		requireSeq(t, e, 2)
		assertStatuses(t, e.a, KindX509, StatusActive)
		assertStatuses(t, e.a, KindJWT, StatusActive)
		assert.False(t, e.a.Bundle().HasX509Authority(x1))
		assertKeyFiles(t, e, 2)
		_, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: newKey(t).Public(), ID: mustID(t, "spiffe://example.org/w")})
		require.NoError(t, err)
	})
}

func requireSeq(t *testing.T, e *testEnv, want uint64) {
	t.Helper()
	seq, ok := e.a.Bundle().SequenceNumber()
	require.True(t, ok)
	require.Equal(t, want, seq)
}

func assertStatuses(t *testing.T, a *Authority, k Kind, want ...SlotStatus) {
	t.Helper()
	var got []SlotStatus
	for _, s := range a.Slots() {
		if s.Kind == k {
			got = append(got, s.Status)
		}
	}
	assert.Equal(t, want, got, "%s slots", k)
}

func preparedSlot(t *testing.T, a *Authority, k Kind) *slot {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	_, p := find(a.st.slots(k))
	require.NotNil(t, p)
	return p
}

// assertStored checks that the stored bundle is b.
func assertStored(t *testing.T, e *testEnv, b *spiffebundle.Bundle) {
	t.Helper()
	stored, err := spiffebundle.Parse(testTD, e.journal.storedBundle())
	require.NoError(t, err)
	assert.True(t, stored.Equal(b), "stored bundle is the served bundle")
}

func assertKeyFiles(t *testing.T, e *testEnv, n int) {
	t.Helper()
	entries, err := os.ReadDir(e.cfg.KeyDir)
	require.NoError(t, err)
	assert.Len(t, entries, n)
}

func jwtKID(t *testing.T, token string) string {
	t.Helper()
	kid, err := parseHeaderKID(token)
	require.NoError(t, err)
	return kid
}

// TestConcurrentSignDuringRotation signs from several goroutines while the
// keys rotate; run with -race. Every SVID verifies against the bundle
// served around the call.
func TestConcurrentSignDuringRotation(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	t0 := e.clock.Now()
	id := mustID(t, "spiffe://example.org/w")
	key := newKey(t)
	updates, cancel := e.a.SubscribeBundle()
	defer cancel()

	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 2 {
		go func() {
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				// The clock may move between signing and verifying: verify at
				// signing time against the bundles seen around the call.
				trusted := e.a.Bundle()
				chain, err := e.a.SignX509SVID(ctx, X509SVIDParams{PublicKey: key.Public(), ID: id, TTL: time.Minute})
				if err == nil {
					for _, c := range e.a.Bundle().X509Authorities() {
						trusted.AddX509Authority(c)
					}
					_, _, err = x509svid.Verify(chain, trusted, x509svid.WithTime(chain[0].NotBefore.Add(backdate)))
				}
				if err == nil {
					_, _, err = e.a.SignJWTSVID(ctx, JWTSVIDParams{ID: id, Audience: []string{"x"}})
				}
				_ = e.a.Slots()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for _, h := range []time.Duration{12, 20, 24, 32, 36, 44} {
		e.clock.SetTime(t0.Add(h * time.Hour))
		e.tick(t)
	}
	close(stop)
	for range 2 {
		require.NoError(t, <-errs)
	}
	// Bundle changes at 12h (prepare), 24h and 36h (drop + prepare).
	b := <-updates
	seq, _ := b.SequenceNumber()
	assert.Equal(t, uint64(4), seq)
}
