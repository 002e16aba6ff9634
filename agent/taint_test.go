package agent

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/workloadapi"
)

func TestTaintRenewAt(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name     string
		notAfter time.Time
		renewAt  time.Time
		rnd      float64
		want     time.Time
	}{
		{"within the window", now.Add(time.Hour), now.Add(30 * time.Minute), 0.5, now.Add(15 * time.Second)},
		{"a tenth of a short remaining life", now.Add(time.Minute), now.Add(30 * time.Second), 0.5, now.Add(3 * time.Second)},
		{"never after the renewal due anyway", now.Add(time.Hour), now.Add(5 * time.Second), 0.9, now.Add(5 * time.Second)},
		{"expired: now", now.Add(-time.Second), now.Add(-time.Minute), 0.5, now.Add(-time.Minute)},
		{"no renewal time yet", now.Add(time.Hour), time.Time{}, 0.1, now.Add(3 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := taintRenewAt(now, tc.notAfter, tc.renewAt, 30*time.Second, func() float64 { return tc.rnd })
			require.Equal(t, tc.want, got)
		})
	}
}

func TestSignerID(t *testing.T) {
	leaf := &x509.Certificate{AuthorityKeyId: []byte{0xAB, 0x01}}
	ca := &x509.Certificate{SubjectKeyId: []byte{0xCD, 0x02}}
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		want  string
	}{
		{"the leaf's authority key ID, lowercase hex", []*x509.Certificate{leaf, ca}, "ab01"},
		{"else the issuer's subject key ID", []*x509.Certificate{{}, ca}, "cd02"},
		{"unknown", []*x509.Certificate{{}}, ""},
		{"no chain", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, signerID(tc.chain)) })
	}
	require.True(t, newTaintSet([]string{"AB01"}).has("ab01"), "IDs compare in lowercase")
	require.False(t, newTaintSet([]string{""}).has(""), "an unknown signer is never tainted")
}

// fixedRand returns each of vals in turn, then the last one again.
func fixedRand(vals ...float64) func() float64 {
	var mu sync.Mutex
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		v := vals[0]
		if len(vals) > 1 {
			vals = vals[1:]
		}
		return v
	}
}

// leafSigner is the signer of an X509-SVID as the agent finds it.
func leafSigner(t *testing.T, m *testMinter, svid workloadapi.X509SVID) string {
	t.Helper()
	chain, err := x509.ParseCertificates(svid.CertChain)
	require.NoError(t, err)
	return svidSigner(chain, m.bundle(), m.clock.Now())
}

// TestCacheRenewsWhatATaintedKeySigned: a taint makes the cache renew
// exactly the SVIDs the tainted key signed, at times spread over the
// taint window, serving the old ones until then; an SVID no workload
// uses is dropped instead of renewed.
func TestCacheRenewsWhatATaintedKeySigned(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	c := NewCache(CacheConfig{Minter: m, Clock: clk, MaxUnused: 10, TaintJitter: 30 * time.Second,
		rand: fixedRand(0.1, 0.5, 0.9)}) // renewals 3 s, 15 s and 27 s after the taint
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	var entries []*entry
	for _, id := range []string{"a", "b", "c", "d", "unused"} {
		entries = append(entries, testEntry(id, "spiffe://example.org/"+id, 1, "uid:"+id))
	}
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: entries})
	subscribe := func(uid string) workloadapi.Subscription {
		sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:" + uid}})
		require.NoError(t, err)
		t.Cleanup(sub.Close)
		return sub
	}
	subs := map[string]workloadapi.Subscription{}
	first := map[string]workloadapi.X509SVID{}
	for _, id := range []string{"a", "b", "c", "unused"} {
		subs[id] = subscribe(id)
		first[id] = next(t, subs[id]).SVIDs[0]
	}
	subs["unused"].Close()
	tainted := m.rotate(t)
	c.Apply(syncUpdate{Bundle: m.bundle()}) // the new CA joins the bundle
	subs["d"] = subscribe("d")              // signed by the new CA
	first["d"] = next(t, subs["d"]).SVIDs[0]
	require.NotEqual(t, leafSigner(t, m, first["a"]), leafSigner(t, m, first["d"]))
	waitIdle(t, c, clk)
	minted := m.x509s.Load()

	taintedID := hex.EncodeToString(tainted.SubjectKeyId)
	c.Apply(syncUpdate{Bundle: m.bundle(), Tainted: newTaintSet([]string{taintedID})})
	waitIdle(t, c, clk)
	for _, sub := range subs {
		select { // the bundle's update, with the SVIDs held
		case <-sub.Updates():
		default:
		}
	}
	c.mu.Lock()
	require.Nil(t, c.svids.get("unused"), "an SVID nobody uses is dropped, not renewed")
	c.mu.Unlock()
	require.Equal(t, minted, m.x509s.Load(), "nothing is minted at the taint itself")

	// Until its renewal, a workload is still served the old SVID.
	again := subscribe("c")
	require.Equal(t, first["c"].CertChain, next(t, again).SVIDs[0].CertChain)
	again.Close()

	taintAt := clk.Now()
	for _, step := range []struct {
		at      time.Duration // after the taint
		renewed int64
	}{{2 * time.Second, 0}, {10 * time.Second, 1}, {20 * time.Second, 2}, {30 * time.Second, 3}, {5 * time.Minute, 3}} {
		clk.SetTime(taintAt.Add(step.at))
		waitIdle(t, c, clk)
		require.Equal(t, minted+step.renewed, m.x509s.Load(), "renewed by %s after the taint", step.at)
	}
	newSigner := leafSigner(t, m, first["d"])
	for _, id := range []string{"a", "b", "c"} {
		renewed := next(t, subs[id]).SVIDs[0]
		require.NotEqual(t, first[id].CertChain, renewed.CertChain, id)
		require.Equal(t, newSigner, leafSigner(t, m, renewed), "%s is renewed by the new key", id)
	}
	select {
	case u := <-subs["d"].Updates():
		t.Fatalf("d, signed by an untainted key, got an update: %v", ids(u))
	default:
	}

	// The same set again (it comes with every bundle) renews nothing more.
	c.Apply(syncUpdate{Bundle: m.bundle(), Tainted: newTaintSet([]string{taintedID})})
	clk.Step(time.Minute)
	waitIdle(t, c, clk)
	require.Equal(t, minted+3, m.x509s.Load())
}

// TestCacheRenewsAnSVIDMintedByAKeyTaintedMeanwhile: an SVID that comes
// back signed by a key already tainted (the server signed it before it
// heard of the taint) is renewed within the taint window too.
func TestCacheRenewsAnSVIDMintedByAKeyTaintedMeanwhile(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	c := NewCache(CacheConfig{Minter: m, Clock: clk, rand: fixedRand(0.5)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	ca, _ := m.signer()
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{testEntry("a", "spiffe://example.org/a", 1, "uid:1")},
		Tainted: newTaintSet([]string{hex.EncodeToString(ca.SubjectKeyId)})})
	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:1"}})
	require.NoError(t, err)
	defer sub.Close()
	first := next(t, sub).SVIDs[0]
	waitIdle(t, c, clk)
	m.rotate(t)
	c.Apply(syncUpdate{Bundle: m.bundle()})
	require.Equal(t, first.CertChain, next(t, sub).SVIDs[0].CertChain, "the bundle's update")
	clk.Step(16 * time.Second) // half the 30 s window
	renewed := next(t, sub).SVIDs[0]
	require.NotEqual(t, first.CertChain, renewed.CertChain)
	require.EqualValues(t, 2, m.x509s.Load())
}

// A key that leaves the bundle (revoked, even untainted): the X509-SVIDs it
// signed are renewed at once, unused ones dropped, and no JWT-SVID it
// signed is served from the cache any more.
func TestCacheRenewsWhatARevokedKeySigned(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	c := NewCache(CacheConfig{Minter: m, Clock: clk, MaxUnused: 10, TaintJitter: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{testEntry("a", "spiffe://example.org/a", 1, "uid:a")}})
	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:a"}})
	require.NoError(t, err)
	t.Cleanup(sub.Close)
	first := next(t, sub).SVIDs[0]
	old := m.rotate(t)
	c.Apply(syncUpdate{Bundle: m.bundle()})
	waitIdle(t, c, clk)
	c.mu.Lock()
	c.jwts.cache.put("k", workloadapi.JWTSVID{Token: jwsWithKid(hex.EncodeToString(old.SubjectKeyId)), ExpiresAt: clk.Now().Add(time.Hour)}, clk.Now())
	c.mu.Unlock()
	minted := m.x509s.Load()

	m.mu.Lock()
	m.retired = nil // the old CA leaves the bundle
	m.mu.Unlock()
	c.Apply(syncUpdate{Bundle: m.bundle()})
	require.Eventually(t, func() bool {
		clk.Step(time.Millisecond) // fires the renewal armed for now, once armed
		return m.x509s.Load() == minted+1
	}, 10*time.Second, time.Millisecond, "renewed at once: no jitter, a millisecond of fake time at a time")
	var renewed workloadapi.X509SVID
	require.Eventually(t, func() bool {
		u := next(t, sub)
		renewed = u.SVIDs[0]
		return string(renewed.CertChain) != string(first.CertChain)
	}, 10*time.Second, 10*time.Millisecond)
	_, ok := c.jwts.cache.get("k")
	require.False(t, ok, "a JWT-SVID of a key gone from the bundle is not served")
}

// jwsWithKid is a compact JWS whose header names kid, with no valid signature.
func jwsWithKid(kid string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"`+kid+`"}`)) + ".e30.c2ln"
}
