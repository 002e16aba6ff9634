package agent

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/workloadapi"
)

// value reads a gauge or counter.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	require.NoError(t, m.Write(&pb))
	if g := pb.GetGauge(); g != nil {
		return g.GetValue()
	}
	return pb.GetCounter().GetValue()
}

func newTestJWTCache(size int) (*jwtCache, *Metrics, *clocktesting.FakeClock) {
	clk := clocktesting.NewFakeClock(time.Now())
	m := NewMetrics(nil)
	return newJWTCache(size, clk, m), m, clk
}

func testJWT(clk *clocktesting.FakeClock, token string, ttl time.Duration) workloadapi.JWTSVID {
	return workloadapi.JWTSVID{ID: spiffeid.RequireFromString("spiffe://example.org/a"), Token: token, ExpiresAt: clk.Now().Add(ttl)}
}

func TestJWTCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c, m, clk := newTestJWTCache(2)
	c.put("x", testJWT(clk, "tx", time.Hour), clk.Now())
	c.put("y", testJWT(clk, "ty", time.Hour), clk.Now())
	_, ok := c.get("x") // y is now the least recently used
	require.True(t, ok)
	c.put("z", testJWT(clk, "tz", time.Hour), clk.Now())

	_, ok = c.get("y")
	require.False(t, ok, "y evicted")
	for _, k := range []string{"x", "z"} {
		svid, ok := c.get(k)
		require.True(t, ok, k)
		require.Equal(t, "t"+k, svid.Token)
	}
	require.Equal(t, 2, c.len())
	require.Equal(t, 2.0, value(t, m.jwtCacheEntries))
	require.Equal(t, 1.0, value(t, m.jwtCacheEvictions))
}

func TestJWTCacheServesUntilHalfLife(t *testing.T) {
	c, m, clk := newTestJWTCache(10)
	c.put("x", testJWT(clk, "t1", 5*time.Minute), clk.Now())
	clk.Step(149 * time.Second)
	svid, ok := c.get("x")
	require.True(t, ok, "before half of 5 min")
	require.Equal(t, "t1", svid.Token)
	clk.Step(time.Second)
	_, ok = c.get("x")
	require.False(t, ok, "at half its lifetime it is refreshed")
	require.Zero(t, c.len(), "and the stale one dropped")
	require.Zero(t, value(t, m.jwtCacheEntries))
	require.Zero(t, value(t, m.jwtCacheEvictions), "a stale token is not an eviction")

	c.put("x", testJWT(clk, "t2", 5*time.Minute), clk.Now())
	svid, ok = c.get("x")
	require.True(t, ok)
	require.Equal(t, "t2", svid.Token, "the refreshed one is served")
}

func TestJWTCacheBoundUnderConcurrentInserts(t *testing.T) {
	const size, writers, each = 50, 16, 500
	c, m, clk := newTestJWTCache(size)
	var wg sync.WaitGroup
	over := make(chan int, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				key := fmt.Sprintf("%d/%d", w, i)
				c.put(key, testJWT(clk, key, time.Hour), clk.Now())
				c.get(fmt.Sprintf("%d/%d", w, i/2))
				if n := c.len(); n > size {
					over <- n
				}
			}
		}()
	}
	wg.Wait()
	close(over)
	for n := range over {
		t.Fatalf("cache held %d JWT-SVIDs, more than %d", n, size)
	}
	require.Equal(t, size, c.len())
	require.Equal(t, float64(size), value(t, m.jwtCacheEntries))
	require.Equal(t, float64(writers*each-size), value(t, m.jwtCacheEvictions), "every insert beyond the size evicted one")
}

func TestJWTKey(t *testing.T) {
	e := testEntry("e1", "spiffe://example.org/a", 1)
	require.Equal(t, jwtKey(e, []string{"x", "y"}), jwtKey(e, []string{"y", "x"}), "audience order does not matter")
	require.NotEqual(t, jwtKey(e, []string{"x\x00y"}), jwtKey(e, []string{"x", "y"}), "no audience can pose as two")
	require.NotEqual(t, jwtKey(e, []string{"x"}), jwtKey(testEntry("e2", "spiffe://example.org/a", 1), []string{"x"}), "per entry")
	require.NotEqual(t, jwtKey(e, []string{"x"}), jwtKey(testEntry("e1", "spiffe://example.org/b", 2), []string{"x"}),
		"an entry whose SPIFFE ID changed does not get the old token")
}
