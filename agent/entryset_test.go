package agent

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest"
)

func sels(vals ...string) map[attest.Selector]struct{} {
	out := map[attest.Selector]struct{}{}
	for _, v := range vals {
		out[attest.Selector{Type: "unix", Value: v}] = struct{}{}
	}
	return out
}

func keys(m map[string]*entry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestEntrySetApply(t *testing.T) {
	s := newEntrySet()
	a1 := testEntry("a", "spiffe://example.org/a", 1, "uid:1")
	b1 := testEntry("b", "spiffe://example.org/b", 1, "uid:1")
	require.Equal(t, map[string]*entry{"a": a1, "b": b1}, s.apply(syncUpdate{Reset: true, Upserts: []*entry{a1, b1}}))

	require.Empty(t, s.apply(syncUpdate{Upserts: []*entry{testEntry("a", "spiffe://example.org/a", 1, "uid:2")}}),
		"the revision held is no change")
	require.Same(t, a1, s.get("a"))

	a2 := testEntry("a", "spiffe://example.org/a", 2, "uid:2")
	require.Equal(t, map[string]*entry{"a": a2, "b": nil}, s.apply(syncUpdate{Upserts: []*entry{a2}, Deleted: []string{"b", "nope"}}))
	require.Empty(t, s.match(sels("uid:1"), spiffeid.ID{}), "old selectors are unindexed")
	require.Equal(t, []string{"a"}, keys(s.match(sels("uid:2"), spiffeid.ID{})))

	c1 := testEntry("c", "spiffe://example.org/c", 3, "uid:3")
	require.Equal(t, map[string]*entry{"a": nil, "c": c1}, s.apply(syncUpdate{Reset: true, Upserts: []*entry{c1}}),
		"a snapshot removes what it does not hold")
	require.Nil(t, s.get("a"))
	require.Empty(t, s.bySel[attest.Selector{Type: "unix", Value: "uid:2"}])
}

func TestEntrySetMatch(t *testing.T) {
	s := newEntrySet()
	s.apply(syncUpdate{Reset: true, Upserts: []*entry{
		testEntry("a", "spiffe://example.org/a", 1, "uid:1"),
		testEntry("b", "spiffe://example.org/b", 1, "uid:1", "gid:1"),
		testEntry("c", "spiffe://example.org/a", 1, "gid:1"),
	}})
	for _, tc := range []struct {
		name string
		have []string
		id   string
		want []string
	}{
		{"AND of selectors", []string{"uid:1"}, "", []string{"a"}},
		{"all selectors", []string{"uid:1", "gid:1"}, "", []string{"a", "b", "c"}},
		{"limited to an ID", []string{"uid:1", "gid:1"}, "spiffe://example.org/a", []string{"a", "c"}},
		{"nothing", []string{"uid:9"}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var id spiffeid.ID
			if tc.id != "" {
				id = spiffeid.RequireFromString(tc.id)
			}
			require.ElementsMatch(t, tc.want, keys(s.match(sels(tc.have...), id)))
		})
	}
}
