package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// testMinter signs CSRs with a CA made in the test, standing in for the
// server's Node API (which the e2e tests exercise for real).
type testMinter struct {
	clock   *clocktesting.FakeClock
	mu      sync.Mutex          // guards caKey, ca and retired (rotate)
	caKey   *ecdsa.PrivateKey   // signs
	ca      *x509.Certificate   // of caKey
	retired []*x509.Certificate // CAs before ca, still in the bundle
	ttl     time.Duration
	x509s   atomic.Int64
	jwts    atomic.Int64
	refuse  sync.Map // entry ID → refused
}

func newTestMinter(t *testing.T, clk *clocktesting.FakeClock) *testMinter {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: clk.Now().Add(-time.Hour), NotAfter: clk.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	ca, _ := x509.ParseCertificate(der)
	return &testMinter{clock: clk, caKey: key, ca: ca, ttl: time.Hour}
}

// bundle is the trust bundle of example.org with the minter's CAs, which
// the chains it signs verify against.
func (m *testMinter) bundle() *spiffebundle.Bundle {
	m.mu.Lock()
	defer m.mu.Unlock()
	return spiffebundle.FromX509Authorities(td, append(slices.Clone(m.retired), m.ca))
}

// rotate makes a new CA sign from now on (one with a subject, so that the
// leaves it signs carry an AuthorityKeyId) and returns the one before.
func (m *testMinter) rotate(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test CA 2"},
		NotBefore: m.clock.Now().Add(-time.Hour), NotAfter: m.clock.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.ca
	m.retired = append(m.retired, old)
	m.ca, m.caKey = ca, key
	return old
}

// signer is the CA signing now.
func (m *testMinter) signer() (*x509.Certificate, *ecdsa.PrivateKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ca, m.caKey
}

func (m *testMinter) NewX509SVIDs(_ context.Context, reqs []*tallyv1.X509SVIDRequest) ([]*tallyv1.X509SVIDResult, error) {
	out := make([]*tallyv1.X509SVIDResult, len(reqs))
	for i, r := range reqs {
		m.x509s.Add(1)
		if _, bad := m.refuse.Load(r.GetEntryId()); bad {
			out[i] = &tallyv1.X509SVIDResult{EntryId: r.GetEntryId(), Error: "refused"}
			continue
		}
		csr, err := x509.ParseCertificateRequest(r.GetCsr())
		if err != nil {
			return nil, err
		}
		serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
		now := m.clock.Now()
		ca, caKey := m.signer()
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial, URIs: csr.URIs, DNSNames: csr.DNSNames,
			// Backdated as Tally's CA does (ca.backdate), which a renewal
			// time must not count as life already lived.
			NotBefore: now.Add(-10 * time.Second), NotAfter: now.Add(m.ttl), KeyUsage: x509.KeyUsageDigitalSignature}, ca, csr.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		out[i] = &tallyv1.X509SVIDResult{EntryId: r.GetEntryId(), CertChain: [][]byte{der}}
	}
	return out, nil
}

func (m *testMinter) NewJWTSVIDs(_ context.Context, reqs []*tallyv1.NewJWTSVIDRequest) ([]*tallyv1.JWTSVIDResult, error) {
	out := make([]*tallyv1.JWTSVIDResult, len(reqs))
	for i, r := range reqs {
		n := m.jwts.Add(1)
		out[i] = &tallyv1.JWTSVIDResult{EntryId: r.GetEntryId(), Token: r.GetEntryId() + "-token-" + string(rune('0'+n)),
			ExpiresAt: m.clock.Now().Add(5 * time.Minute).Unix()}
	}
	return out, nil
}

func testEntry(id, spiffeID string, rev uint64, sels ...string) *entry {
	e := &entry{ID: id, SPIFFEID: spiffeid.RequireFromString(spiffeID), Revision: rev}
	for _, s := range sels {
		e.Selectors = append(e.Selectors, attest.Selector{Type: "unix", Value: s})
	}
	return e
}

func startCache(t *testing.T, maxUnused int) (*Cache, *testMinter, *clocktesting.FakeClock) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	c := NewCache(CacheConfig{Minter: m, Clock: clk, MaxUnused: maxUnused, RetryAfter: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, m, clk
}

// waitIdle waits until the cache's scheduler has nothing queued or in
// flight, has taken every wake-up, and waits on the fake clock (its timer
// at the earliest renewal). A renewal due before the clock's time would
// have fired the timer, so the scheduler would be busy or already have
// minted: after waitIdle, what was minted is final for this time.
func waitIdle(t *testing.T, c *Cache, clk *clocktesting.FakeClock) {
	t.Helper()
	require.Eventually(t, func() bool { return c.sched.idle() && clk.HasWaiters() }, 10*time.Second, time.Millisecond)
}

func next(t *testing.T, sub workloadapi.Subscription) workloadapi.X509Update {
	t.Helper()
	select {
	case u := <-sub.Updates():
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no update")
		return workloadapi.X509Update{}
	}
}

func ids(u workloadapi.X509Update) []string {
	var out []string
	for _, s := range u.SVIDs {
		out = append(out, s.ID.String())
	}
	return out
}

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestCacheMintsForSubscribersAndFollowsEntries(t *testing.T) {
	c, m, _ := startCache(t, 10)
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{
		testEntry("a", "spiffe://example.org/a", 1, "uid:1"),
		testEntry("b", "spiffe://example.org/b", 1, "uid:1", "gid:1"),
		testEntry("c", "spiffe://example.org/c", 1, "uid:2"),
	}})
	require.Zero(t, m.x509s.Load(), "nothing is minted before a workload asks")

	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:1"}})
	require.NoError(t, err)
	defer sub.Close()
	require.Equal(t, []string{"spiffe://example.org/a"}, ids(next(t, sub)), "b needs gid:1 as well (AND)")
	require.EqualValues(t, 1, m.x509s.Load(), "only what a connected workload needs is minted")

	// A new matching entry arrives on the open subscription.
	c.Apply(syncUpdate{Upserts: []*entry{testEntry("d", "spiffe://example.org/d", 2, "uid:1")}})
	require.Equal(t, []string{"spiffe://example.org/a", "spiffe://example.org/d"}, ids(next(t, sub)))

	// An entry whose identity changes is minted again; a deleted one goes.
	c.Apply(syncUpdate{Upserts: []*entry{{ID: "a", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/a2"), Revision: 3,
		Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}}}, Deleted: []string{"d"}})
	require.Equal(t, []string{"spiffe://example.org/a2"}, ids(next(t, sub)))

	// No match: an update with no SVIDs (the Workload API turns it into
	// PermissionDenied).
	none, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:9"}})
	require.NoError(t, err)
	defer none.Close()
	require.Empty(t, next(t, none).SVIDs)
}

func TestCacheRenewsAtHalfLife(t *testing.T) {
	c, m, clk := startCache(t, 10)
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{testEntry("a", "spiffe://example.org/a", 1, "uid:1")}})
	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:1"}})
	require.NoError(t, err)
	defer sub.Close()
	first := next(t, sub).SVIDs[0]

	waitIdle(t, c, clk)
	clk.Step(23 * time.Minute) // before half-life less the largest jitter (lifetime/10): nothing
	waitIdle(t, c, clk)
	require.EqualValues(t, 1, m.x509s.Load())
	clk.Step(8 * time.Minute) // past half-life
	renewed := next(t, sub).SVIDs[0]
	require.NotEqual(t, first.CertChain, renewed.CertChain)
	require.True(t, clk.Now().Before(first.ExpiresAt), "renewed before the old one expired")
	require.EqualValues(t, 2, m.x509s.Load())
}

// TestCacheRenewsShortBackdatedSVIDsInTime: a 10 s SVID backdated by 10 s
// is renewed half way through the 10 s it has left, not at once (which a
// renewal time counted from NotBefore would do, over and over).
func TestCacheRenewsShortBackdatedSVIDsInTime(t *testing.T) {
	c, m, clk := startCache(t, 10)
	m.ttl = 10 * time.Second
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{testEntry("a", "spiffe://example.org/a", 1, "uid:1")}})
	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:1"}})
	require.NoError(t, err)
	defer sub.Close()
	first := next(t, sub).SVIDs[0]
	waitIdle(t, c, clk)
	require.EqualValues(t, 1, m.x509s.Load(), "no renewal right after the first mint")
	// Certificates carry whole seconds, so the SVID has 9 to 10 s left:
	// the earliest renewal is at 40 % of 9 s, 3.6 s.
	clk.Step(3500 * time.Millisecond)
	waitIdle(t, c, clk)
	require.EqualValues(t, 1, m.x509s.Load())
	clk.Step(1600 * time.Millisecond) // past half of 10 s
	renewed := next(t, sub).SVIDs[0]
	require.NotEqual(t, first.CertChain, renewed.CertChain)
	require.EqualValues(t, 2, m.x509s.Load())
}

func TestCacheKeepsUnusedSVIDsWithinLRU(t *testing.T) {
	c, m, _ := startCache(t, 2)
	var entries []*entry
	for i := range 5 {
		entries = append(entries, testEntry(string(rune('a'+i)), "spiffe://example.org/"+string(rune('a'+i)), 1, "uid:"+string(rune('0'+i))))
	}
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: entries})
	for i := range 5 {
		sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:" + string(rune('0'+i))}})
		require.NoError(t, err)
		require.Len(t, next(t, sub).SVIDs, 1)
		sub.Close()
	}
	c.mu.Lock()
	cached := c.svids.len()
	c.mu.Unlock()
	require.Equal(t, 2, cached, "SVIDs nobody uses are bounded by the LRU size")

	// The most recent one is still cached: no new mint.
	before := m.x509s.Load()
	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:4"}})
	require.NoError(t, err)
	defer sub.Close()
	require.Len(t, next(t, sub).SVIDs, 1)
	require.Equal(t, before, m.x509s.Load())
}

func TestCacheRefusedEntryDoesNotBlockOthers(t *testing.T) {
	c, m, _ := startCache(t, 10)
	m.refuse.Store("bad", true)
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{
		testEntry("good", "spiffe://example.org/good", 1, "uid:1"),
		testEntry("bad", "spiffe://example.org/bad", 1, "uid:1"),
	}})
	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:1"}})
	require.NoError(t, err)
	defer sub.Close()
	require.Equal(t, []string{"spiffe://example.org/good"}, ids(next(t, sub)))
}

func TestCacheJWTPerAudienceUntilHalfLife(t *testing.T) {
	c, m, clk := startCache(t, 10)
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{testEntry("a", "spiffe://example.org/a", 1, "uid:1")}})
	sel := []attest.Selector{{Type: "unix", Value: "uid:1"}}
	fetch := func(aud ...string) string {
		svids, err := c.FetchJWTSVIDs(context.Background(), sel, spiffeid.ID{}, aud)
		require.NoError(t, err)
		require.Len(t, svids, 1)
		return svids[0].Token
	}
	t1 := fetch("x", "y")
	require.Equal(t, t1, fetch("y", "x"), "audience order does not matter")
	require.NotEqual(t, t1, fetch("z"))
	require.EqualValues(t, 2, m.jwts.Load())
	clk.Step(151 * time.Second) // past half of 5 min
	require.NotEqual(t, t1, fetch("x", "y"))
	require.EqualValues(t, 3, m.jwts.Load())
}

// startJWTCache starts a cache with one entry for uid:1 (and one for uid:2)
// and the given JWT settings.
func startJWTCache(t *testing.T, cacheSize int, perSecond float64, burst int) (*Cache, *testMinter, *clocktesting.FakeClock) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := newTestMinter(t, clk)
	c := NewCache(CacheConfig{Minter: m, Clock: clk, JWTCacheSize: cacheSize, JWTMintRate: perSecond, JWTMintBurst: burst})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{
		testEntry("a", "spiffe://example.org/a", 1, "uid:1"),
		testEntry("b", "spiffe://example.org/b", 1, "uid:2"),
	}})
	return c, m, clk
}

func fetchJWT(c *Cache, uid string, aud ...string) (string, error) {
	svids, err := c.FetchJWTSVIDs(context.Background(), []attest.Selector{{Type: "unix", Value: uid}}, spiffeid.ID{}, aud)
	if err != nil {
		return "", err
	}
	if len(svids) != 1 {
		return "", fmt.Errorf("%d JWT-SVIDs", len(svids))
	}
	return svids[0].Token, nil
}

func TestCacheJWTRateLimitsFreshMints(t *testing.T) {
	c, m, clk := startJWTCache(t, 100, 2, 5)
	tokens := map[string]string{}
	limited := 0
	for i := range 20 {
		aud := fmt.Sprintf("aud-%d", i)
		token, err := fetchJWT(c, "uid:1", aud)
		if errors.Is(err, workloadapi.ErrRateLimited) {
			limited++
			continue
		}
		require.NoError(t, err)
		tokens[aud] = token
	}
	require.Len(t, tokens, 5, "the burst")
	require.Equal(t, 15, limited)
	require.EqualValues(t, 5, m.jwts.Load(), "refused requests reach no server")
	require.Equal(t, 15.0, value(t, c.cfg.Metrics.jwtMintsLimited))

	for aud, want := range tokens {
		got, err := fetchJWT(c, "uid:1", aud)
		require.NoError(t, err, "cached audiences are served beyond the limit")
		require.Equal(t, want, got)
	}
	_, err := fetchJWT(c, "uid:2", "aud-0")
	require.NoError(t, err, "another identity has its own limit")

	clk.Step(500 * time.Millisecond) // one token at 2/s
	_, err = fetchJWT(c, "uid:1", "later-1")
	require.NoError(t, err)
	_, err = fetchJWT(c, "uid:1", "later-2")
	require.ErrorIs(t, err, workloadapi.ErrRateLimited)
	require.Contains(t, err.Error(), "spiffe://example.org/a")
	require.EqualValues(t, 7, m.jwts.Load())
}

func TestCacheJWTCacheIsBounded(t *testing.T) {
	c, m, _ := startJWTCache(t, 3, 1000, 1000)
	for i := range 10 {
		_, err := fetchJWT(c, "uid:1", fmt.Sprintf("aud-%d", i))
		require.NoError(t, err)
	}
	require.Equal(t, 3, c.jwts.len())
	require.Equal(t, 3.0, value(t, c.cfg.Metrics.jwtCacheEntries))
	require.Equal(t, 7.0, value(t, c.cfg.Metrics.jwtCacheEvictions))
	before := m.jwts.Load()
	_, err := fetchJWT(c, "uid:1", "aud-9")
	require.NoError(t, err)
	require.Equal(t, before, m.jwts.Load(), "the most recent is cached")
	_, err = fetchJWT(c, "uid:1", "aud-0")
	require.NoError(t, err)
	require.Equal(t, before+1, m.jwts.Load(), "the oldest was evicted and is minted again")
}

// TestCacheJWTConcurrentFlood: many callers asking fresh audiences at once
// get at most the burst minted, and the cache stays within its size.
func TestCacheJWTConcurrentFlood(t *testing.T) {
	const size, burst, callers, each = 10, 30, 20, 10
	c, m, _ := startJWTCache(t, size, 1, burst) // the fake clock stands still: no refill
	var wg sync.WaitGroup
	var ok, limited, over atomic.Int64
	for w := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				_, err := fetchJWT(c, "uid:1", fmt.Sprintf("aud-%d-%d", w, i), "shared")
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, workloadapi.ErrRateLimited):
					limited.Add(1)
				default:
					t.Error(err)
				}
				if c.jwts.len() > size {
					over.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, over.Load(), "the cache never held more than its size")
	require.EqualValues(t, burst, ok.Load())
	require.EqualValues(t, callers*each-burst, limited.Load())
	require.EqualValues(t, burst, m.jwts.Load())
	require.Equal(t, size, c.jwts.len())
}

// An entry for one pod (a k8s:pod-uid selector, as the registrar writes
// when the pod is scheduled) is minted when it arrives, before its
// container asks; the first fetch then needs no mint.
func TestCachePreMintsPodEntries(t *testing.T) {
	c, m, clk := startCache(t, 10)
	pod := &entry{ID: "p", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/web"), Revision: 1,
		Selectors: []attest.Selector{{Type: "k8s", Value: "ns:shop"}, {Type: "k8s", Value: "pod-uid:u1"}}}
	c.Apply(syncUpdate{Reset: true, Bundle: m.bundle(), Upserts: []*entry{pod, testEntry("a", "spiffe://example.org/a", 1, "uid:1")}})
	waitIdle(t, c, clk)
	require.EqualValues(t, 1, m.x509s.Load(), "the pod's entry only")

	sub, err := c.SubscribeX509(context.Background(), []attest.Selector{{Type: "k8s", Value: "ns:shop"}, {Type: "k8s", Value: "pod-uid:u1"}})
	require.NoError(t, err)
	defer sub.Close()
	require.Equal(t, []string{"spiffe://example.org/ns/shop/sa/web"}, ids(next(t, sub)))
	require.EqualValues(t, 1, m.x509s.Load(), "served what was minted ahead")
}
