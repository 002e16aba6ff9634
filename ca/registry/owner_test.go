package registry_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
)

func owned(id, cluster, pod string) store.Entry {
	e := entry(id, agentA, "k8s:pod-uid:"+pod+"-uid")
	e.Owner = &store.Owner{Cluster: cluster, Kind: registry.OwnerClusterIdentity, Name: "web", Pod: "shop/" + pod, PodUID: pod + "-uid"}
	return e
}

// An entry the registrar keeps is refused to hand edits unless forced; a
// forced edit keeps the owner, and a hand edit never sets one.
func TestOwnedEntriesNeedForce(t *testing.T) {
	r, _ := newRegistry(t, 0)
	ctx := context.Background()
	out, err := r.WriteEntries(ctx, store.EntryWrites{Create: []store.Entry{owned("web", "prod", "p1")}})
	require.NoError(t, err)
	mine := out.Create[0]
	hand := create(t, r, entry("hand", agentA, "unix:uid:1"))[0]

	edit := mine
	edit.Owner, edit.Hint = nil, "edited"
	_, err = r.UpdateEntry(ctx, edit, false)
	require.ErrorIs(t, err, registry.ErrOwned)
	require.ErrorContains(t, err, `ClusterIdentity "web" of cluster "prod"`)
	require.ErrorIs(t, r.DeleteEntries(ctx, []string{hand.ID, mine.ID}, false), registry.ErrOwned)
	got, err := r.GetEntry(ctx, mine.ID)
	require.NoError(t, err)
	require.Equal(t, mine, got, "a refused edit changes nothing")
	_, err = r.GetEntry(ctx, hand.ID)
	require.NoError(t, err, "a refused batch deletes nothing")

	forced, err := r.UpdateEntry(ctx, edit, true)
	require.NoError(t, err)
	require.Equal(t, "edited", forced.Hint)
	require.Equal(t, mine.Owner, forced.Owner, "a forced edit keeps the owner")

	claim := hand
	claim.Owner = mine.Owner
	updated, err := r.UpdateEntry(ctx, claim, true)
	require.NoError(t, err)
	require.Nil(t, updated.Owner, "a hand edit never marks an entry owned")

	require.NoError(t, r.DeleteEntries(ctx, []string{mine.ID}, true))
}

func TestOwnedListsOneCluster(t *testing.T) {
	r, _ := newRegistry(t, 0)
	ctx := context.Background()
	_, err := r.WriteEntries(ctx, store.EntryWrites{Create: []store.Entry{owned("a", "prod", "p1"), owned("b", "prod", "p2"), owned("c", "dev", "p3")}})
	require.NoError(t, err)
	create(t, r, entry("hand", agentA, "unix:uid:1"))
	var got []string
	r.Owned("prod", func(e *store.Entry) { got = append(got, e.SPIFFEID) })
	require.ElementsMatch(t, []string{"spiffe://example.org/a", "spiffe://example.org/b"}, got)
}

func TestOwnerValidation(t *testing.T) {
	for name, o := range map[string]store.Owner{
		"no cluster":            {Kind: registry.OwnerClusterIdentity, Name: "web", Pod: "a/b", PodUID: "u"},
		"unknown kind":          {Cluster: "prod", Kind: "Pod", Name: "web"},
		"identity without pod":  {Cluster: "prod", Kind: registry.OwnerClusterIdentity, Name: "web"},
		"static entry with pod": {Cluster: "prod", Kind: registry.OwnerClusterStaticEntry, Name: "db", Pod: "a/b", PodUID: "u"},
		"control character":     {Cluster: "pr\x1bod", Kind: registry.OwnerClusterStaticEntry, Name: "db"},
	} {
		t.Run(name, func(t *testing.T) {
			e := entry("x", agentA, "unix:uid:1")
			e.Owner = &o
			require.ErrorIs(t, registry.ValidateEntry(td, registry.Limits{}, &e), registry.ErrInvalid)
		})
	}
}

func TestFindEqual(t *testing.T) {
	r, _ := newRegistry(t, 0)
	stored := create(t, r, entry("web", agentA, "k8s:ns:shop", "k8s:pod-uid:u1"))[0]
	same := entry("web", agentA, "k8s:pod-uid:u1", "k8s:ns:shop")
	require.NoError(t, r.Validate(&same))
	require.Equal(t, stored.ID, r.FindEqual(&same), "the same selector set in another order")
	for _, other := range []store.Entry{
		entry("web", "spiffe://example.org/tally/agent/join_token/b", "k8s:ns:shop", "k8s:pod-uid:u1"),
		entry("db", agentA, "k8s:ns:shop", "k8s:pod-uid:u1"),
		entry("web", agentA, "k8s:ns:shop", "k8s:pod-uid:u2"),
	} {
		require.NoError(t, r.Validate(&other))
		require.Empty(t, r.FindEqual(&other), "%v", other)
	}
}

// Writes under another agent are no change for this one (and cost it no
// walk of its subtree); its own still are.
func TestChangesOfOtherAgentsAreNone(t *testing.T) {
	r, _ := newRegistry(t, 0)
	const agentB = "spiffe://example.org/tally/agent/join_token/b"
	mine := create(t, r, entry("a", agentA, "unix:uid:1"))[0]
	sc := registry.Scope{AgentID: agentA}
	rev := r.Changes(sc, 0).Revision

	theirs := create(t, r, entry("b", agentB, "unix:uid:2"))[0]
	require.NoError(t, r.DeleteEntries(context.Background(), []string{theirs.ID}, false))
	d := r.Changes(sc, rev)
	require.False(t, d.Reset)
	require.Empty(t, d.Upserts)
	require.Empty(t, d.Deleted)
	require.Greater(t, d.Revision, rev)

	require.NoError(t, r.DeleteEntries(context.Background(), []string{mine.ID}, false))
	require.Equal(t, []string{mine.ID}, r.Changes(sc, d.Revision).Deleted)
}
