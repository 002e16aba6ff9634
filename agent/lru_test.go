package agent

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLRUDropsLeastRecentlyUsed(t *testing.T) {
	l := newLRU[string, int](3)
	for i, k := range []string{"a", "b", "c"} {
		require.False(t, l.add(k, i), "room for %s", k)
	}
	v, ok := l.get("a") // a is now the most recent; b the least
	require.True(t, ok)
	require.Equal(t, 0, v)
	require.False(t, l.add("c", 20), "replacing a value evicts nothing")

	require.True(t, l.add("d", 3))
	_, ok = l.get("b")
	require.False(t, ok, "b was the least recently used")
	require.True(t, l.add("e", 4))
	_, ok = l.get("a")
	require.False(t, ok, "then a: c was replaced after a was read")
	for k, want := range map[string]int{"c": 20, "d": 3, "e": 4} {
		v, ok := l.get(k)
		require.True(t, ok, k)
		require.Equal(t, want, v, k)
	}
	require.Equal(t, 3, l.len())

	l.remove("d")
	l.remove("nope")
	require.Equal(t, 2, l.len())
	require.False(t, l.add("f", 5), "removing made room")
}

func TestLRUOfOne(t *testing.T) {
	l := newLRU[int, string](1)
	require.False(t, l.add(1, "x"))
	require.True(t, l.add(2, "y"))
	_, ok := l.get(1)
	require.False(t, ok)
	v, _ := l.get(2)
	require.Equal(t, "y", v)
	require.Panics(t, func() { newLRU[int, int](0) })
}
