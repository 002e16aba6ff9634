package registry_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/internal/reserved"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newRegistry(t *testing.T, window int) (*registry.Registry, *badgerstore.Store) {
	t.Helper()
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	r := registry.New(registry.Config{TrustDomain: td, Store: st, Limits: registry.Limits{MaxTTL: 4 * time.Hour}, EventWindow: window})
	require.NoError(t, r.Load(context.Background()))
	return r, st
}

func entry(id, parent string, sel ...string) store.Entry {
	e := store.Entry{SPIFFEID: "spiffe://example.org/" + id, ParentID: parent}
	for _, s := range sel {
		parsed, _ := registry.ParseSelector(s)
		e.Selectors = append(e.Selectors, parsed)
	}
	return e
}

func create(t *testing.T, r *registry.Registry, es ...store.Entry) []store.Entry {
	t.Helper()
	out, err := r.CreateEntries(context.Background(), es)
	require.NoError(t, err)
	return out
}

func ids(es []*store.Entry) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, e.SPIFFEID)
	}
	slices.Sort(out)
	return out
}

const agentA = "spiffe://example.org/tally/agent/join_token/a"

func TestChangesAndAuthorized(t *testing.T) {
	r, _ := newRegistry(t, 0)
	ctx := context.Background()
	sc := registry.Scope{AgentID: agentA, Aliases: []string{"spiffe://example.org/alias"}}
	created := create(t, r,
		entry("direct", agentA, "unix:uid:1"),
		entry("aliased", "spiffe://example.org/alias", "unix:uid:2"),
		entry("grandchild", "spiffe://example.org/aliased", "unix:uid:3"),
		entry("foreign", "spiffe://example.org/tally/agent/join_token/b", "unix:uid:4"),
	)

	d := r.Changes(sc, 0)
	require.True(t, d.Reset)
	require.Equal(t, []string{"spiffe://example.org/aliased", "spiffe://example.org/direct", "spiffe://example.org/grandchild"}, ids(d.Upserts))
	rev := d.Revision

	for _, e := range created[:3] {
		_, err := r.Authorized(sc, e.ID)
		require.NoError(t, err, e.SPIFFEID)
	}
	_, err := r.Authorized(sc, created[3].ID)
	require.ErrorIs(t, err, registry.ErrNotAuthorized)
	_, err = r.Authorized(sc, "missing")
	require.ErrorIs(t, err, store.ErrNotFound)

	// Nothing changed: an empty delta.
	require.True(t, r.Changes(sc, rev).Empty())

	// A new entry parented to an entry the agent has: only it.
	leaf := create(t, r, entry("leaf", "spiffe://example.org/direct", "unix:uid:5"))[0]
	d = r.Changes(sc, rev)
	require.False(t, d.Reset)
	require.Equal(t, []string{"spiffe://example.org/leaf"}, ids(d.Upserts))
	rev = d.Revision

	// A change to another agent's entry is invisible.
	foreign := created[3]
	foreign.Hint = "x"
	_, err = r.UpdateEntry(ctx, foreign, false)
	require.NoError(t, err)
	d = r.Changes(sc, rev)
	require.True(t, d.Empty(), "%+v", d)
	rev = d.Revision

	// Deleting a leaf sends its ID.
	require.NoError(t, r.DeleteEntries(ctx, []string{leaf.ID}, false))
	d = r.Changes(sc, rev)
	require.Equal(t, []string{leaf.ID}, d.Deleted)
	require.Empty(t, d.Upserts)
	rev = d.Revision

	// Re-parenting an entry with children away: a snapshot without them.
	aliased := created[1]
	aliased.ParentID = "spiffe://example.org/tally/agent/join_token/b"
	_, err = r.UpdateEntry(ctx, aliased, false)
	require.NoError(t, err)
	d = r.Changes(sc, rev)
	require.True(t, d.Reset)
	require.Equal(t, []string{"spiffe://example.org/direct"}, ids(d.Upserts))
	rev = d.Revision

	// Moving it back brings the whole subtree.
	aliased.ParentID = agentA
	_, err = r.UpdateEntry(ctx, aliased, false)
	require.NoError(t, err)
	d = r.Changes(sc, rev)
	require.True(t, d.Reset)
	require.Equal(t, []string{"spiffe://example.org/aliased", "spiffe://example.org/direct", "spiffe://example.org/grandchild"}, ids(d.Upserts))
	rev = d.Revision

	// A new parent entry created above existing entries pulls them in as
	// upserts, without a snapshot: they are dirty through their parent.
	orphan := create(t, r, entry("orphan", "spiffe://example.org/later", "unix:uid:6"))[0]
	require.True(t, r.Changes(sc, rev).Empty() || len(r.Changes(sc, rev).Upserts) == 0)
	rev = r.Changes(sc, rev).Revision
	create(t, r, entry("later", agentA, "unix:uid:7"))
	d = r.Changes(sc, rev)
	require.False(t, d.Reset)
	require.Equal(t, []string{"spiffe://example.org/later", "spiffe://example.org/orphan"}, ids(d.Upserts))
	_ = orphan

	// An entry moved out after its child was moved away in an earlier
	// event still yields a correct set.
	rev = d.Revision
	later := r.Changes(sc, 0)
	var laterEntry store.Entry
	for _, e := range later.Upserts {
		if e.SPIFFEID == "spiffe://example.org/later" {
			laterEntry = *e
		}
	}
	laterEntry.ParentID = "spiffe://example.org/tally/agent/join_token/b"
	_, err = r.UpdateEntry(ctx, laterEntry, false)
	require.NoError(t, err)
	orphan.ParentID = "spiffe://example.org/nowhere"
	_, err = r.UpdateEntry(ctx, orphan, false)
	require.NoError(t, err)
	d = r.Changes(sc, rev)
	require.True(t, d.Reset)
	require.NotContains(t, ids(d.Upserts), "spiffe://example.org/orphan")
	require.NotContains(t, ids(d.Upserts), "spiffe://example.org/later")
}

func TestNodeAliasBySelectors(t *testing.T) {
	r, _ := newRegistry(t, 0)
	server := reserved.ServerID(td).String()
	alias := entry("nodes/zone-a", server, "k8s_psat:cluster:c1", "k8s_psat:agent_node_label:zone:a")
	create(t, r, alias, entry("web", "spiffe://example.org/nodes/zone-a", "k8s:ns:shop"))

	inZone := registry.Scope{AgentID: agentA, Selectors: []store.Selector{
		{Type: "k8s_psat", Value: "cluster:c1"}, {Type: "k8s_psat", Value: "agent_node_label:zone:a"}, {Type: "k8s_psat", Value: "agent_ns:tally"},
	}}
	otherZone := registry.Scope{AgentID: agentA, Selectors: []store.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}}
	require.Equal(t, []string{"spiffe://example.org/web"}, ids(r.Changes(inZone, 0).Upserts), "the alias entry itself is not issued")
	require.Empty(t, r.Changes(otherZone, 0).Upserts)
}

func TestEventWindow(t *testing.T) {
	r, _ := newRegistry(t, 8)
	sc := registry.Scope{AgentID: agentA}
	first := create(t, r, entry("w0", agentA, "unix:uid:0"))[0]
	for i := 1; i <= 20; i++ {
		create(t, r, entry("w"+string(rune('a'+i)), agentA, "unix:uid:1"))
	}
	d := r.Changes(sc, first.Revision)
	require.True(t, d.Reset, "a revision older than the in-memory window gets a snapshot")
	require.Len(t, d.Upserts, 21)
	recent := r.Changes(sc, d.Revision-1)
	require.False(t, recent.Reset)
	require.Len(t, recent.Upserts, 1)
}

func TestFollowsOtherWriters(t *testing.T) {
	r, st := newRegistry(t, 0)
	ch, stop := r.Subscribe()
	defer stop()
	// A write by another replica, straight into the store.
	_, err := st.CreateEntries(context.Background(), []store.Entry{{ID: "x", SPIFFEID: "spiffe://example.org/x", ParentID: agentA,
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1"}}}})
	require.NoError(t, err)
	require.Equal(t, 0, r.Count())
	require.NoError(t, r.CatchUp(context.Background()))
	require.Equal(t, 1, r.Count())
	select {
	case <-ch:
	default:
		t.Fatal("subscribers are notified of changes")
	}
}

func TestValidateEntry(t *testing.T) {
	good := func() store.Entry { return entry("web", agentA, "unix:uid:1") }
	cases := []struct {
		name   string
		mutate func(*store.Entry)
		errHas string
	}{
		{"ok", func(*store.Entry) {}, ""},
		{"no path", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org" }, "needs a path"},
		{"reserved", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org/tally/x" }, "reserved"},
		{"other trust domain", func(e *store.Entry) { e.SPIFFEID = "spiffe://other.org/web" }, "trust domain"},
		{"uppercase td", func(e *store.Entry) { e.SPIFFEID = "spiffe://Example.org/web" }, "spiffe_id"},
		{"dot segment", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org/a/../b" }, "spiffe_id"},
		{"no parent", func(e *store.Entry) { e.ParentID = "" }, "parent_id is required"},
		{"no selectors", func(e *store.Entry) { e.Selectors = nil }, "at least one selector"},
		{"duplicate selector", func(e *store.Entry) { e.Selectors = append(e.Selectors, e.Selectors[0]) }, "twice"},
		{"unknown type", func(e *store.Entry) { e.Selectors[0].Type = "docker" }, "unknown type"},
		{"label needs key and value", func(e *store.Entry) { e.Selectors[0] = store.Selector{Type: "k8s", Value: "pod-label:app"} }, "2 value part"},
		{"negative ttl", func(e *store.Entry) { e.X509TTL = -time.Second }, "negative"},
		{"sub-second ttl", func(e *store.Entry) { e.JWTTTL = time.Millisecond }, "shorter than 1s"},
		{"huge ttl", func(e *store.Entry) { e.X509TTL = 5 * time.Hour }, "exceeds"},
		{"bad dns", func(e *store.Entry) { e.DNSNames = []string{"a..b"} }, "not a DNS name"},
		{"wildcard not first", func(e *store.Entry) { e.DNSNames = []string{"a.*.b"} }, "not a DNS name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := good()
			c.mutate(&e)
			err := registry.ValidateEntry(td, registry.Limits{MaxTTL: 4 * time.Hour}, &e)
			if c.errHas == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, registry.ErrInvalid)
			require.ErrorContains(t, err, c.errHas)
		})
	}
}
