package registrar

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
)

func newRegistry(t *testing.T) *registry.Registry {
	t.Helper()
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	r := registry.New(registry.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Store: st})
	require.NoError(t, r.Load(context.Background()))
	return r
}

func podEntry(uid string) store.Entry {
	return store.Entry{SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/tally/agent/k8s_psat/prod/n1",
		Selectors: []store.Selector{{Type: "k8s", Value: "pod-uid:" + uid}},
		Owner:     &store.Owner{Cluster: "prod", Kind: registry.OwnerClusterIdentity, Name: "web", Pod: "ns/" + uid, PodUID: uid}}
}

// Writes of several reconciles go in one store write, each getting its
// own results back; when that write is refused, each is written alone, so
// only the refused one fails.
func TestBatcher(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	taken, err := r.CreateEntries(ctx, []store.Entry{func() store.Entry { e := podEntry("u3"); e.Owner = nil; return e }()})
	require.NoError(t, err)
	b := newBatcher(r)

	reqs := []*writeReq{
		{w: store.EntryWrites{Create: []store.Entry{podEntry("u1")}}, done: make(chan writeResult, 1)},
		{w: store.EntryWrites{Create: []store.Entry{podEntry("u2")}}, done: make(chan writeResult, 1)},
	}
	rev := r.Revision()
	b.flush(ctx, reqs)
	for i, req := range reqs {
		res := <-req.done
		require.NoError(t, res.err)
		require.Len(t, res.out.Create, 1)
		require.Equal(t, "pod-uid:u"+string(rune('1'+i)), res.out.Create[0].Selectors[0].Value, "each gets its own entry back")
	}
	require.Equal(t, rev+2, r.Revision())

	bad := &writeReq{w: store.EntryWrites{Create: []store.Entry{podEntry("u3")}}, done: make(chan writeResult, 1)}
	good := &writeReq{w: store.EntryWrites{Create: []store.Entry{podEntry("u4")}}, done: make(chan writeResult, 1)}
	b.flush(ctx, []*writeReq{bad, good})
	require.ErrorIs(t, (<-bad.done).err, store.ErrAlreadyExists, "equal to %s", taken[0].ID)
	res := <-good.done
	require.NoError(t, res.err)
	require.Len(t, res.out.Create, 1)
}
