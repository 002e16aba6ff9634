package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slotByID returns the live slot of kind named id (a copy).
func slotByID(t *testing.T, a *Authority, k Kind, id string) *slot {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	s, err := lookup(a.st.slots(k), k, id)
	require.NoError(t, err)
	cp := *s
	return &cp
}

func signWith(t *testing.T, e *testEnv, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	chain, err := e.a.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: newKey(t).Public(), ID: mustID(t, "spiffe://example.org/w"), TTL: ttl})
	require.NoError(t, err)
	return chain
}

// prepareAndActivate prepares a key of kind by hand, waits the two refresh
// hints and activates it; it returns the old and the new key's IDs.
func prepareAndActivate(t *testing.T, e *testEnv, k Kind) (old, cur string) {
	t.Helper()
	ctx := context.Background()
	old = activeID(t, e.a, k)
	p, err := e.a.Prepare(ctx, k)
	require.NoError(t, err)
	e.clock.Step(2 * e.a.cfg.RefreshHint)
	got, err := e.a.Activate(ctx, k, "")
	require.NoError(t, err)
	require.Equal(t, p.ID, got.ID)
	return old, p.ID
}

func TestPrepareByHand(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	t0 := e.clock.Now()
	x1 := caOf(t, e.a)
	requireSeq(t, e, 1)

	p, err := e.a.Prepare(ctx, KindX509)
	require.NoError(t, err)
	assert.Equal(t, KindX509, p.Kind)
	assert.Equal(t, StatusPrepared, p.Status)
	assert.WithinDuration(t, t0.Add(24*time.Hour), p.NotAfter, time.Second)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	assertStatuses(t, e.a, KindJWT, StatusActive)

	// Published at once, persisted, and signing nothing yet.
	requireSeq(t, e, 2)
	prepared := slotByID(t, e.a, KindX509, p.ID)
	assert.True(t, e.a.Bundle().HasX509Authority(prepared.cert))
	assertStored(t, e, e.a.Bundle())
	assert.FileExists(t, filepath.Join(e.cfg.KeyDir, prepared.keyFile))
	assert.Equal(t, x1.SubjectKeyId, signWith(t, e, 0)[0].AuthorityKeyId)

	t.Run("a second prepare is refused", func(t *testing.T) {
		_, err := e.a.Prepare(ctx, KindX509)
		require.ErrorIs(t, err, ErrConflict)
		assert.Contains(t, err.Error(), "x509 key "+p.ID+" is already prepared")
		assertKeyFiles(t, e, 3)
		requireSeq(t, e, 2)
	})
	t.Run("an unknown kind is refused", func(t *testing.T) {
		for _, k := range []Kind{"", "X509", "ssh"} {
			_, err := e.a.Prepare(ctx, k)
			require.ErrorIs(t, err, ErrInvalidParams)
		}
	})
	t.Run("a failed save changes nothing", func(t *testing.T) {
		e.journal.setFail(errInjected)
		defer e.journal.setFail(nil)
		_, err := e.a.Prepare(ctx, KindJWT)
		require.ErrorIs(t, err, errInjected)
		assertStatuses(t, e.a, KindJWT, StatusActive)
		assertKeyFiles(t, e, 3)
	})

	// At 1/2 the automatic rotation prepares a JWT key but no second X.509 key.
	e.clock.SetTime(t0.Add(12 * time.Hour))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
	assertStatuses(t, e.a, KindJWT, StatusActive, StatusPrepared)
	// At 5/6 it activates the key prepared by hand.
	e.clock.SetTime(t0.Add(20 * time.Hour))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	assert.Equal(t, p.ID, activeID(t, e.a, KindX509))
}

func TestActivateByHand(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	x1 := activeSlot(t, e.a, KindX509)
	hint := e.a.cfg.RefreshHint
	require.Equal(t, 5*time.Minute, hint)

	_, err := e.a.Activate(ctx, KindX509, "")
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "no x509 key is prepared")

	p, err := e.a.Prepare(ctx, KindX509)
	require.NoError(t, err)
	published := e.clock.Now()

	for _, tc := range []struct {
		name string
		id   string
		want error
		msg  string
	}{
		{"the active key", x1.id, ErrConflict, "is active: only a prepared key can be activated"},
		{"an unknown key", "00ff", ErrNotFound, `no x509 key "00ff"`},
		{"a jwt key named as x509", activeID(t, e.a, KindJWT), ErrNotFound, ""},
		{"the prepared key, just published", p.ID, ErrConflict, "can be activated from " + published.Add(2*hint).UTC().Format(time.RFC3339)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.a.Activate(ctx, KindX509, tc.id)
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.msg)
			assertStatuses(t, e.a, KindX509, StatusActive, StatusPrepared)
		})
	}

	// One second short of two refresh hints in the bundle: still refused.
	e.clock.Step(2*hint - time.Second)
	_, err = e.a.Activate(ctx, KindX509, p.ID)
	require.ErrorIs(t, err, ErrConflict)
	assert.Equal(t, x1.cert.SubjectKeyId, signWith(t, e, 0)[0].AuthorityKeyId)

	e.clock.Step(time.Second)
	saves := e.journal.saves
	updates, cancel := e.a.SubscribeBundle()
	defer cancel()
	<-updates
	got, err := e.a.Activate(ctx, KindX509, p.ID)
	require.NoError(t, err)
	select {
	case b := <-updates:
		assert.True(t, b.Equal(e.a.Bundle()), "subscribers get the same bundle again, to re-read the slots")
	default:
		t.Fatal("no bundle sent to subscribers on activation")
	}
	assert.Equal(t, StatusActive, got.Status)
	assert.True(t, got.ActivatedAt.Equal(e.clock.Now()))
	assert.Equal(t, saves+1, e.journal.saves, "persisted")
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	requireSeq(t, e, 2) // the bundle did not change
	prepared := slotByID(t, e.a, KindX509, p.ID)
	assert.Equal(t, prepared.cert.SubjectKeyId, signWith(t, e, 0)[0].AuthorityKeyId, "the new key signs")
	old := slotByID(t, e.a, KindX509, x1.id)
	assert.Empty(t, old.keyFile)
	assert.True(t, old.retiredAt.Equal(e.clock.Now()))
	assert.NoFileExists(t, filepath.Join(e.cfg.KeyDir, x1.keyFile), "the old key's file is deleted")
	assert.True(t, e.a.Bundle().HasX509Authority(x1.cert), "the old key stays in the bundle")

	_, err = e.a.Activate(ctx, KindX509, x1.id)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "is old: only a prepared key can be activated")

	// The JWT kind too, by "".
	j1, j2 := prepareAndActivate(t, e, KindJWT)
	assert.NotEqual(t, j1, j2)
	assertStatuses(t, e.a, KindJWT, StatusOld, StatusActive)
	token, _, err := e.a.SignJWTSVID(ctx, JWTSVIDParams{ID: mustID(t, "spiffe://example.org/w"), Audience: []string{"x"}})
	require.NoError(t, err)
	assert.Equal(t, j2, jwtKID(t, token))
}

func TestTaintByHand(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	x1 := activeID(t, e.a, KindX509)

	_, err := e.a.Taint(ctx, KindX509, "")
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "no old x509 key to taint")
	_, err = e.a.Taint(ctx, KindX509, x1)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "is active: prepare and activate a new key first")
	p, err := e.a.Prepare(ctx, KindX509)
	require.NoError(t, err)
	_, err = e.a.Taint(ctx, KindX509, p.ID)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "revoke it instead")
	_, err = e.a.Taint(ctx, KindX509, "nope")
	require.ErrorIs(t, err, ErrNotFound)
	assert.Nil(t, e.a.TaintedX509IDs())

	e.clock.Step(2 * e.a.cfg.RefreshHint)
	_, err = e.a.Activate(ctx, KindX509, "")
	require.NoError(t, err)

	updates, cancel := e.a.SubscribeBundle()
	defer cancel()
	<-updates
	before := e.a.Bundle()
	got, err := e.a.Taint(ctx, KindX509, "")
	require.NoError(t, err)
	assert.Equal(t, x1, got.ID)
	assert.Equal(t, StatusOld, got.Status)
	assert.True(t, got.Tainted)
	assert.True(t, got.TaintedAt.Equal(e.clock.Now()))
	assert.Equal(t, []string{x1}, e.a.TaintedX509IDs())
	assert.True(t, before.Equal(e.a.Bundle()), "the bundle is unchanged")
	select {
	case b := <-updates:
		assert.True(t, b.Equal(before), "subscribers get the same bundle again, to re-read the tainted keys")
	default:
		t.Fatal("no bundle sent to subscribers on taint")
	}

	// Tainting it again changes nothing.
	saves := e.journal.saves
	again, err := e.a.Taint(ctx, KindX509, x1)
	require.NoError(t, err)
	assert.Equal(t, got, again)
	assert.Equal(t, saves, e.journal.saves)

	// A tainted JWT key is not an X.509 one.
	j1, _ := prepareAndActivate(t, e, KindJWT)
	jt, err := e.a.Taint(ctx, KindJWT, j1)
	require.NoError(t, err)
	assert.True(t, jt.Tainted)
	assert.Equal(t, []string{x1}, e.a.TaintedX509IDs())

	// The mark survives a restart.
	slots := e.a.Slots()
	e.restart(t)
	assert.Equal(t, slots, e.a.Slots())
	assert.Equal(t, []string{x1}, e.a.TaintedX509IDs())

	// It ends with the key: at its expiry the tainted key leaves the bundle.
	e.clock.Step(24 * time.Hour)
	e.tick(t)
	assert.Nil(t, e.a.TaintedX509IDs())

	t.Run("several old keys need an id", func(t *testing.T) {
		e := newTestEnv(t, nil)
		prepareAndActivate(t, e, KindX509)
		prepareAndActivate(t, e, KindX509)
		assertStatuses(t, e.a, KindX509, StatusOld, StatusOld, StatusActive)
		_, err := e.a.Taint(ctx, KindX509, "")
		require.ErrorIs(t, err, ErrInvalidParams)
		assert.Contains(t, err.Error(), "2 old x509 keys")
	})
}

func TestRevokeByHand(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	id := activeID(t, e.a, KindX509)

	for _, tc := range []struct {
		name  string
		id    string
		force bool
		want  error
	}{
		{"no id", "", false, ErrInvalidParams},
		{"an unknown key", "abcd", true, ErrNotFound},
		{"the active key", id, false, ErrConflict},
		{"the active key, forced", id, true, ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.a.Revoke(ctx, KindX509, tc.id, tc.force)
			require.ErrorIs(t, err, tc.want)
			assertStatuses(t, e.a, KindX509, StatusActive)
		})
	}

	t.Run("a prepared key, with its key file", func(t *testing.T) {
		p, err := e.a.Prepare(ctx, KindX509)
		require.NoError(t, err)
		s := slotByID(t, e.a, KindX509, p.ID)
		requireSeq(t, e, 2)
		got, err := e.a.Revoke(ctx, KindX509, p.ID, false)
		require.NoError(t, err)
		assert.Equal(t, StatusRevoked, got.Status)
		assertStatuses(t, e.a, KindX509, StatusActive)
		requireSeq(t, e, 3)
		assert.False(t, e.a.Bundle().HasX509Authority(s.cert))
		assertStored(t, e, e.a.Bundle())
		assert.NoFileExists(t, filepath.Join(e.cfg.KeyDir, s.keyFile))
		assertKeyFiles(t, e, 2)
	})

	// An SVID signed by the first key with the longest TTL, just before
	// it is retired by hand.
	svid := signWith(t, e, 4*time.Hour)
	x1 := activeSlot(t, e.a, KindX509)
	prepareAndActivate(t, e, KindX509)
	retired := e.clock.Now()
	until := retired.Add(4*time.Hour + signSlack)

	_, err := e.a.Revoke(ctx, KindX509, x1.id, false)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "may be valid until "+until.UTC().Format(time.RFC3339))
	e.clock.SetTime(until.Add(-time.Second))
	_, err = e.a.Revoke(ctx, KindX509, x1.id, false)
	require.ErrorIs(t, err, ErrConflict, "refused until the last SVID it signed expires")
	validAt := svid[0].NotAfter.Add(-time.Minute)
	_, _, err = x509svid.Verify(svid, e.a.Bundle(), x509svid.WithTime(validAt))
	require.NoError(t, err, "what it signed still verifies")

	// Forced: gone from the bundle, the sequence bumps, persisted.
	seq, _ := e.a.Bundle().SequenceNumber()
	got, err := e.a.Revoke(ctx, KindX509, x1.id, true)
	require.NoError(t, err)
	assert.Equal(t, x1.id, got.ID)
	assert.Equal(t, StatusRevoked, got.Status)
	assertStatuses(t, e.a, KindX509, StatusActive)
	requireSeq(t, e, seq+1)
	b := e.a.Bundle()
	assert.False(t, b.HasX509Authority(x1.cert))
	assertStored(t, e, b)
	_, _, err = x509svid.Verify(svid, b, x509svid.WithTime(validAt))
	require.Error(t, err, "what it signed no longer verifies")
	assertKeyFiles(t, e, 2)
	e.restart(t)
	assertStatuses(t, e.a, KindX509, StatusActive)
	requireSeq(t, e, seq+1)

	t.Run("an old key whose SVIDs expired needs no force", func(t *testing.T) {
		e := newTestEnv(t, nil)
		x1, _ := prepareAndActivate(t, e, KindX509)
		e.clock.Step(4*time.Hour + signSlack)
		_, err := e.a.Revoke(ctx, KindX509, x1, false)
		require.NoError(t, err)
		assertStatuses(t, e.a, KindX509, StatusActive)
	})
	t.Run("a tainted key leaves the tainted set", func(t *testing.T) {
		e := newTestEnv(t, nil)
		x1, _ := prepareAndActivate(t, e, KindX509)
		_, err := e.a.Taint(ctx, KindX509, x1)
		require.NoError(t, err)
		_, err = e.a.Revoke(ctx, KindX509, x1, true)
		require.NoError(t, err)
		assert.Nil(t, e.a.TaintedX509IDs())
	})
	t.Run("jwt", func(t *testing.T) {
		e := newTestEnv(t, nil)
		token, _, err := e.a.SignJWTSVID(ctx, JWTSVIDParams{ID: mustID(t, "spiffe://example.org/w"), Audience: []string{"x"}})
		require.NoError(t, err)
		j1, _ := prepareAndActivate(t, e, KindJWT)
		_, err = e.a.Revoke(ctx, KindJWT, j1, false)
		require.ErrorIs(t, err, ErrConflict)
		_, err = e.a.Revoke(ctx, KindJWT, j1, true)
		require.NoError(t, err)
		assert.False(t, e.a.Bundle().HasJWTAuthority(j1))
		assert.Equal(t, j1, jwtKID(t, token), "the kid its tokens name is gone")
		requireSeq(t, e, 3)
	})
}

// TestRevokeWaitsForNotAfterWithoutRetiredAt: a journal written before
// retired_at was recorded still loads; its old keys count as signing until
// their NotAfter.
func TestRevokeWaitsForNotAfterWithoutRetiredAt(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	x1, _ := prepareAndActivate(t, e, KindX509)
	notAfter := slotByID(t, e.a, KindX509, x1).notAfter

	var doc map[string]any
	require.NoError(t, json.Unmarshal(e.journal.journal, &doc))
	for _, s := range doc["slots"].([]any) {
		delete(s.(map[string]any), "retired_at")
	}
	stripped, err := json.Marshal(doc)
	require.NoError(t, err)
	require.NotContains(t, string(stripped), "retired_at")
	e.journal.journal = stripped
	e.restart(t)

	e.clock.Step(4*time.Hour + signSlack)
	_, err = e.a.Revoke(ctx, KindX509, x1, false)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "may be valid until "+notAfter.UTC().Format(time.RFC3339))
}

func TestJournalRefusesTaintedActiveSlot(t *testing.T) {
	e := newTestEnv(t, nil)
	j := strings.Replace(string(e.journal.journal), `"status":"active"`, `"status":"active","tainted":true`, 1)
	require.NotEqual(t, string(e.journal.journal), j)
	_, err := parseJournal(testTD, []byte(j))
	require.ErrorContains(t, err, "only old slots can be")
}

func TestRevokeUpstreamRefusedWhileUnexpired(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	up := newTestUpstream(t, t.TempDir(), now.Add(-time.Hour), now.Add(365*24*time.Hour), false)
	e := newTestEnvAt(t, now, func(c *Config) {
		c.UpstreamCertFile, c.UpstreamKeyFile = up.certFile, up.keyFile
	})
	ctx := context.Background()
	x1, _ := prepareAndActivate(t, e, KindX509)
	_, err := e.a.Revoke(ctx, KindX509, x1, true)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "revoke its certificate at the upstream CA")
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)

	e.clock.Step(4*time.Hour + signSlack)
	_, err = e.a.Revoke(ctx, KindX509, x1, false)
	require.NoError(t, err)
	assertStatuses(t, e.a, KindX509, StatusActive)
}

// TestAutomaticRotationAfterManualSteps: the schedule follows the keys a
// manual rotation left.
func TestAutomaticRotationAfterManualSteps(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	t0 := e.clock.Now()
	e.clock.Step(time.Hour)
	t1 := e.clock.Now()
	x1, x2 := prepareAndActivate(t, e, KindX509) // x2 made at t1, active at t1+10m
	_, err := e.a.Taint(ctx, KindX509, x1)
	require.NoError(t, err)

	// x2's own 1/2: a successor is prepared, once.
	e.clock.SetTime(t1.Add(12 * time.Hour))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive, StatusPrepared)
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive, StatusPrepared)

	// Revoking the prepared successor: the next tick prepares another.
	_, err = e.a.Revoke(ctx, KindX509, preparedSlot(t, e.a, KindX509).id, false)
	require.NoError(t, err)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive, StatusPrepared)
	x3 := preparedSlot(t, e.a, KindX509).id

	// 5/6 of x2's life: x3 takes over.
	e.clock.SetTime(t1.Add(20 * time.Hour))
	e.tick(t)
	assert.Equal(t, x3, activeID(t, e.a, KindX509))
	assertStatuses(t, e.a, KindX509, StatusOld, StatusOld, StatusActive)
	assert.Equal(t, []string{x1}, e.a.TaintedX509IDs())

	// x1, tainted, expires at its NotAfter.
	e.clock.SetTime(t0.Add(24 * time.Hour))
	e.tick(t)
	assertStatuses(t, e.a, KindX509, StatusOld, StatusActive)
	assert.Equal(t, StatusOld, slotByID(t, e.a, KindX509, x2).status)
	assert.Nil(t, e.a.TaintedX509IDs())
	signWith(t, e, 0)
}

// TestManualStepsLogged: each step is logged at Info (Warn for a forced
// revocation), naming the key.
func TestManualStepsLogged(t *testing.T) {
	var logs bytes.Buffer
	e := newTestEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	ctx := context.Background()
	x1, x2 := prepareAndActivate(t, e, KindX509)
	_, err := e.a.Taint(ctx, KindX509, x1)
	require.NoError(t, err)
	_, err = e.a.Revoke(ctx, KindX509, x1, true)
	require.NoError(t, err)
	for _, want := range []string{
		`"level":"INFO","msg":"ca key prepared by hand","kind":"x509","id":"` + x2 + `"`,
		`"level":"INFO","msg":"ca key activated by hand","kind":"x509","id":"` + x2 + `"`,
		`"level":"INFO","msg":"ca key retired by hand; kept in bundle until it expires","kind":"x509","id":"` + x1 + `"`,
		`"level":"INFO","msg":"ca key tainted by hand; agents re-mint what it signed","kind":"x509","id":"` + x1 + `"`,
		`"level":"WARN","msg":"ca key revoked by hand while SVIDs it signed may be unexpired; dropped from bundle","kind":"x509","id":"` + x1 + `"`,
	} {
		assert.Contains(t, logs.String(), want)
	}
}
