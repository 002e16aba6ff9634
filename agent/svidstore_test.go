package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestSVIDStoreKeepsNeededAndBoundsUnused(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	s := newSVIDStore(2)
	svid := func() *cachedSVID { return &cachedSVID{renewAt: clk.Now().Add(time.Minute)} }

	s.acquire("a")
	s.acquire("a")
	require.False(t, s.put("a", svid()))
	for _, id := range []string{"x", "y", "z"} {
		s.put(id, svid()) // nobody needs them: LRU of 2
	}
	require.Equal(t, 3, s.len(), "a (needed) and the two most recent unused")
	require.Nil(t, s.get("x"), "the least recent unused one went")

	require.False(t, s.release("a"), "one workload still needs a")
	require.True(t, s.needed("a"))
	require.True(t, s.release("a"))
	require.False(t, s.needed("a"))
	require.Equal(t, 2, s.len(), "a went to the LRU and pushed y out")
	require.Nil(t, s.get("y"))
	require.NotNil(t, s.get("a"))

	s.acquire("z") // back in use: out of the LRU
	require.True(t, s.put("z", svid()), "a rotation")
	s.put("w", svid())
	s.put("v", svid())
	require.NotNil(t, s.get("z"), "needed SVIDs are never evicted")
	require.Nil(t, s.get("a"))

	require.True(t, s.fresh("z", clk.Now()))
	clk.Step(time.Minute)
	require.False(t, s.fresh("z", clk.Now()), "due for renewal")
	s.drop("z")
	require.Nil(t, s.get("z"))
	require.False(t, s.fresh("nope", clk.Now()))
}
