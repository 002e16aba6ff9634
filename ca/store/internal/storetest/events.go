package storetest

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tallyid/tally/ca/store"
)

// testEvents runs a mix of changes, failed ones included, and checks that the
// log has one event per change with consecutive revisions and that Events
// after any revision returns exactly the later changes.
func testEvents(t *testing.T, open Open) {
	ctx := t.Context()
	s := open(t)
	require.Zero(t, revision(t, s), "revision of a new store")
	require.Empty(t, events(t, s, 0))

	a, b, c := newEntry("a", web, parent1, "k8s:ns:a"), newEntry("b", web, parent1, "k8s:ns:b"), newEntry("c", db, parent2, "k8s:ns:c")
	mustCreate(t, s, a, b)
	_, err := s.CreateEntries(ctx, []store.Entry{newEntry("x", db, parent1, "k8s:ns:x"), a})
	require.ErrorIs(t, err, store.ErrAlreadyExists)
	updated := a
	updated.Hint = "updated"
	_, err = s.UpdateEntry(ctx, updated)
	require.NoError(t, err)
	_, err = s.UpdateEntry(ctx, newEntry("zz", db, parent1, "k8s:ns:zz"))
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, s.DeleteEntries(ctx, []string{"b"}))
	require.ErrorIs(t, s.DeleteEntries(ctx, []string{"a", "zz"}), store.ErrNotFound)
	mustCreate(t, s, c)

	wantTypes := []store.EventType{store.EventCreated, store.EventCreated, store.EventUpdated, store.EventDeleted, store.EventCreated}
	wantIDs := []string{"a", "b", "a", "b", "c"}
	all := events(t, s, 0)
	require.Equal(t, seq(1, 5), revisions(all))
	require.Equal(t, uint64(5), revision(t, s))
	for i, ev := range all {
		require.Equal(t, wantTypes[i], ev.Type, "event %d", ev.Revision)
		require.Equal(t, wantIDs[i], ev.Entry.ID, "event %d", ev.Revision)
	}

	for after := range uint64(7) {
		t.Run(fmt.Sprintf("after %d", after), func(t *testing.T) {
			got := events(t, s, after)
			want := all[min(after, uint64(len(all))):]
			require.Equal(t, revisions(want), revisions(got))
			for i := range want {
				require.Equal(t, want[i].Type, got[i].Type)
				requireEntries(t, []store.Entry{want[i].Entry}, []store.Entry{got[i].Entry})
			}
		})
	}

	limits := []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{after: 0, limit: 2, want: []uint64{1, 2}},
		{after: 3, limit: 1, want: []uint64{4}},
		{after: 3, limit: 10, want: []uint64{4, 5}},
		{after: 5, limit: 1, want: nil},
	}
	for _, tc := range limits {
		t.Run(fmt.Sprintf("after %d limit %d", tc.after, tc.limit), func(t *testing.T) {
			got, err := s.Events(ctx, tc.after, tc.limit)
			require.NoError(t, err)
			require.Equal(t, tc.want, nilIfEmptyRevs(revisions(got)))
		})
	}
}

func nilIfEmptyRevs(r []uint64) []uint64 {
	if len(r) == 0 {
		return nil
	}
	return r
}

func testPruneEvents(t *testing.T, open Open) {
	tests := []struct {
		name  string
		prune []uint64 // PruneEvents calls, in order
		// kept is the oldest revision still returned; Events after
		// kept-2 or earlier must fail with ErrCompacted.
		kept uint64
	}{
		{name: "nothing", prune: []uint64{0}, kept: 1},
		{name: "before the first", prune: []uint64{1}, kept: 1},
		{name: "some", prune: []uint64{5}, kept: 5},
		{name: "newest is kept", prune: []uint64{100}, kept: 10},
		{name: "before the newest", prune: []uint64{10}, kept: 10},
		{name: "twice", prune: []uint64{3, 6}, kept: 6},
		{name: "lower again changes nothing", prune: []uint64{6, 3}, kept: 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			for _, e := range manyEntries("e", 10) {
				mustCreate(t, s, e)
			}
			for _, before := range tc.prune {
				require.NoError(t, s.PruneEvents(ctx, before))
			}

			require.Equal(t, uint64(10), revision(t, s), "pruning changes no revision")
			require.Equal(t, seq(tc.kept, 10), revisions(events(t, s, tc.kept-1)))
			for after := range tc.kept - 1 {
				_, err := s.Events(ctx, after, 0)
				require.ErrorIs(t, err, store.ErrCompacted, "events after %d", after)
			}
			// New changes continue the log.
			mustCreate(t, s, newEntry("new", web, parent2, "k8s:ns:new"))
			require.Equal(t, seq(tc.kept, 11), revisions(events(t, s, tc.kept-1)))
		})
	}
}

// testConcurrentWritersAndReader has writers create entries one by one while a
// reader follows Events: it must see every revision exactly once, in order.
func testConcurrentWritersAndReader(t *testing.T, open Open) {
	const writers, perWriter = 4, 25
	const total = writers * perWriter
	s := open(t)
	g, ctx := errgroup.WithContext(t.Context())
	for w := range writers {
		g.Go(func() error {
			for _, e := range manyEntries(fmt.Sprintf("w%d", w), perWriter) {
				if _, err := s.CreateEntries(ctx, []store.Entry{e}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	seen := make(map[string]bool)
	g.Go(func() error {
		var last uint64
		for last < total {
			evs, err := s.Events(ctx, last, 7)
			if err != nil {
				return err
			}
			for _, ev := range evs {
				if ev.Revision != last+1 {
					return fmt.Errorf("event %d after %d", ev.Revision, last)
				}
				if seen[ev.Entry.ID] {
					return fmt.Errorf("entry %s seen twice", ev.Entry.ID)
				}
				seen[ev.Entry.ID] = true
				last = ev.Revision
			}
		}
		return nil
	})
	require.NoError(t, g.Wait())
	require.Len(t, seen, total)
	require.Equal(t, uint64(total), revision(t, s))
}
