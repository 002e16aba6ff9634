package agent

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMintLimiterBurstThenRate(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	l := newMintLimiter(2, 5, 10, clk) // 2/s, burst 5
	a := spiffeid.RequireFromString("spiffe://example.org/a")
	b := spiffeid.RequireFromString("spiffe://example.org/b")
	allowed := func(id spiffeid.ID, n int) int {
		got := 0
		for range n {
			if l.allow(id) {
				got++
			}
		}
		return got
	}
	require.Equal(t, 5, allowed(a, 20), "the burst, then nothing while the clock stands still")
	require.Equal(t, 5, allowed(b, 20), "another identity has its own bucket")

	clk.Step(400 * time.Millisecond)
	require.Zero(t, allowed(a, 10), "0.8 of a token")
	clk.Step(100 * time.Millisecond)
	require.Equal(t, 1, allowed(a, 10), "one token per 500 ms")
	clk.Step(10 * time.Second)
	require.Equal(t, 5, allowed(a, 20), "refills to the burst, not beyond")
}

func TestMintLimiterKeepsBoundedIdentities(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	l := newMintLimiter(1, 1, 3, clk)
	id := func(i int) spiffeid.ID {
		return spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("example.org"), "/w"+string(rune('a'+i)))
	}
	for i := range 10 {
		require.True(t, l.allow(id(i)))
		require.LessOrEqual(t, l.identities(), 3)
	}
	require.False(t, l.allow(id(9)), "a recent identity keeps its empty bucket")
	require.True(t, l.allow(id(0)), "the least recently used one was dropped and starts full")
}
