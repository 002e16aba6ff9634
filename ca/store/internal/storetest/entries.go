package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store"
)

const (
	parent1 = "spiffe://example.org/tally/agent/n1"
	parent2 = "spiffe://example.org/tally/agent/n2"
	web     = "spiffe://example.org/web"
	db      = "spiffe://example.org/db"
)

func testCreateEntries(t *testing.T, open Open) {
	a := newEntry("a", web, parent1, "k8s:ns:shop", "k8s:sa:web")
	batch100 := manyEntries("b", 100)
	batch100[99] = newEntry("b-dup", web, parent1, "k8s:sa:web", "k8s:ns:shop")

	tests := []struct {
		name    string
		stored  []store.Entry
		batch   []store.Entry
		wantErr error
		// mention is what the error must name.
		mention string
	}{
		{name: "one", batch: []store.Entry{a}},
		{name: "batch", batch: manyEntries("x", 3)},
		{
			name:   "other selectors are another entry",
			stored: []store.Entry{a},
			batch: []store.Entry{
				newEntry("b", web, parent1, "k8s:ns:shop"),
				newEntry("c", web, parent1, "k8s:ns:shop", "k8s:sa:web", "k8s:pod-name:w-1"),
				newEntry("d", web, parent2, "k8s:ns:shop", "k8s:sa:web"),
				newEntry("e", db, parent1, "k8s:ns:shop", "k8s:sa:web"),
			},
		},
		{
			name:   "fields and CreatedAt kept",
			stored: []store.Entry{a},
			batch: []store.Entry{{
				ID: "full", SPIFFEID: db, ParentID: parent2, Selectors: selectors("unix:uid:1000"),
				X509TTL: 2 * time.Hour, JWTTTL: 5 * time.Minute, DNSNames: []string{"db.example.org"},
				Hint: "db", Admin: true, CreatedAt: created.Add(42 * time.Second),
			}},
		},
		{
			name:    "stored id",
			stored:  []store.Entry{a},
			batch:   []store.Entry{newEntry("ok", db, parent1, "k8s:ns:db"), newEntry("a", db, parent2, "k8s:ns:db")},
			wantErr: store.ErrAlreadyExists,
			mention: `"a"`,
		},
		{
			name:    "id twice in the batch",
			batch:   []store.Entry{newEntry("same", web, parent1, "k8s:ns:a"), newEntry("same", db, parent1, "k8s:ns:b")},
			wantErr: store.ErrAlreadyExists,
			mention: `"same"`,
		},
		{
			name:    "equal to stored entry, selectors reordered",
			stored:  []store.Entry{a},
			batch:   []store.Entry{newEntry("a2", web, parent1, "k8s:sa:web", "k8s:ns:shop")},
			wantErr: store.ErrAlreadyExists,
			mention: `"a2"`,
		},
		{
			name:    "equal to stored entry, selector repeated",
			stored:  []store.Entry{a},
			batch:   []store.Entry{newEntry("a2", web, parent1, "k8s:sa:web", "k8s:ns:shop", "k8s:sa:web")},
			wantErr: store.ErrAlreadyExists,
			mention: `"a2"`,
		},
		{
			name:    "equal entries in the batch",
			batch:   []store.Entry{newEntry("p", web, parent1, "k8s:ns:a", "k8s:sa:b"), newEntry("q", web, parent1, "k8s:sa:b", "k8s:ns:a")},
			wantErr: store.ErrAlreadyExists,
			mention: `"q"`,
		},
		{
			name:    "one duplicate in a batch of 100 writes nothing",
			stored:  []store.Entry{a},
			batch:   batch100,
			wantErr: store.ErrAlreadyExists,
			mention: `"b-dup"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			var stored []store.Entry
			if len(tc.stored) > 0 {
				stored = mustCreate(t, s, tc.stored...)
			}
			rev := revision(t, s)

			got, err := s.CreateEntries(ctx, tc.batch)

			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.ErrorContains(t, err, tc.mention)
				require.Equal(t, rev, revision(t, s), "revision after a failed batch")
				require.Empty(t, events(t, s, rev), "events of a failed batch")
				all, err := s.ListEntries(ctx, store.EntryFilter{})
				require.NoError(t, err)
				requireEntries(t, stored, all)
				return
			}
			require.NoError(t, err)
			require.Len(t, got, len(tc.batch))
			evs := events(t, s, rev)
			require.Len(t, evs, len(tc.batch))
			for i, want := range tc.batch {
				want.Revision = rev + uint64(i) + 1
				requireEntries(t, []store.Entry{want}, got[i:i+1])
				stored, err := s.GetEntry(ctx, want.ID)
				require.NoError(t, err)
				requireEntries(t, []store.Entry{want}, []store.Entry{stored})
				require.Equal(t, store.EventCreated, evs[i].Type)
				require.Equal(t, want.Revision, evs[i].Revision)
				requireEntries(t, []store.Entry{want}, []store.Entry{evs[i].Entry})
				require.Nil(t, evs[i].Previous)
			}
			require.Equal(t, rev+uint64(len(tc.batch)), revision(t, s))
		})
	}
}

// testCreateEntriesLargeBatch stores 10,000 entries in one call, then finds a
// duplicate against the full table.
func testCreateEntriesLargeBatch(t *testing.T, open Open) {
	ctx := t.Context()
	s := open(t)
	batch := manyEntries("big", 10_000)

	got, err := s.CreateEntries(ctx, batch)
	require.NoError(t, err)
	require.Len(t, got, len(batch))
	require.Equal(t, uint64(len(batch)), got[len(got)-1].Revision)
	require.Equal(t, uint64(len(batch)), revision(t, s))
	all, err := s.ListEntries(ctx, store.EntryFilter{})
	require.NoError(t, err)
	require.Equal(t, ids(batch), ids(all))

	dup := batch[7_777]
	dup.ID = "late"
	_, err = s.CreateEntries(ctx, []store.Entry{dup})
	require.ErrorIs(t, err, store.ErrAlreadyExists)
	require.ErrorContains(t, err, batch[7_777].ID)
}

func testUpdateEntry(t *testing.T, open Open) {
	a := newEntry("a", web, parent1, "k8s:ns:shop", "k8s:sa:web")
	b := newEntry("b", db, parent1, "k8s:ns:shop", "k8s:sa:db")

	tests := []struct {
		name    string
		update  store.Entry
		wantErr error
		mention string
		// lists maps filters to the IDs they must list after the update.
		lists map[string]store.EntryFilter
		want  map[string][]string
	}{
		{
			name: "fields replaced, CreatedAt kept",
			update: store.Entry{
				ID: "a", SPIFFEID: web, ParentID: parent1, Selectors: selectors("k8s:ns:shop", "k8s:sa:web"),
				X509TTL: 3 * time.Hour, DNSNames: []string{"web.shop"}, Hint: "web", Admin: true,
				CreatedAt: created.Add(time.Hour),
			},
		},
		{
			name:   "selectors reordered stay the same entry",
			update: newEntry("a", web, parent1, "k8s:sa:web", "k8s:ns:shop"),
		},
		{
			name:   "indexes follow parent, SPIFFE ID and selectors",
			update: newEntry("a", "spiffe://example.org/web2", parent2, "k8s:ns:shop2"),
			lists: map[string]store.EntryFilter{
				"old parent":    {ParentID: parent1},
				"new parent":    {ParentID: parent2},
				"old spiffe id": {SPIFFEID: web},
				"new spiffe id": {SPIFFEID: "spiffe://example.org/web2"},
				"old selector":  {Selectors: selectors("k8s:sa:web")},
				"kept by b":     {Selectors: selectors("k8s:ns:shop")},
				"new selector":  {Selectors: selectors("k8s:ns:shop2")},
			},
			want: map[string][]string{
				"old parent":    {"b"},
				"new parent":    {"a"},
				"old spiffe id": nil,
				"new spiffe id": {"a"},
				"old selector":  nil,
				"kept by b":     {"b"},
				"new selector":  {"a"},
			},
		},
		{
			name:    "absent",
			update:  newEntry("zz", web, parent2, "k8s:ns:zz"),
			wantErr: store.ErrNotFound,
			mention: `"zz"`,
		},
		{
			name:    "would equal another entry",
			update:  newEntry("a", db, parent1, "k8s:sa:db", "k8s:ns:shop"),
			wantErr: store.ErrAlreadyExists,
			mention: `"b"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			stored := mustCreate(t, s, a, b)
			rev := revision(t, s)

			got, err := s.UpdateEntry(ctx, tc.update)

			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.ErrorContains(t, err, tc.mention)
				require.Equal(t, rev, revision(t, s))
				all, err := s.ListEntries(ctx, store.EntryFilter{})
				require.NoError(t, err)
				requireEntries(t, stored, all)
				return
			}
			require.NoError(t, err)
			want := tc.update
			want.CreatedAt = stored[0].CreatedAt
			want.Revision = rev + 1
			requireEntries(t, []store.Entry{want}, []store.Entry{got})
			read, err := s.GetEntry(ctx, "a")
			require.NoError(t, err)
			requireEntries(t, []store.Entry{want}, []store.Entry{read})
			require.Equal(t, rev+1, revision(t, s))

			evs := events(t, s, rev)
			require.Len(t, evs, 1)
			require.Equal(t, store.EventUpdated, evs[0].Type)
			require.Equal(t, rev+1, evs[0].Revision)
			requireEntries(t, []store.Entry{want}, []store.Entry{evs[0].Entry})
			require.NotNil(t, evs[0].Previous)
			requireEntries(t, stored[:1], []store.Entry{*evs[0].Previous})

			for name, f := range tc.lists {
				list, err := s.ListEntries(ctx, f)
				require.NoError(t, err)
				require.Equal(t, tc.want[name], nilIfEmpty(ids(list)), name)
			}
		})
	}
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func testDeleteEntries(t *testing.T, open Open) {
	a := newEntry("a", web, parent1, "k8s:ns:shop", "k8s:sa:web")
	b := newEntry("b", db, parent1, "k8s:ns:shop", "k8s:sa:db")
	c := newEntry("c", db, parent2, "k8s:ns:shop", "k8s:sa:db")

	tests := []struct {
		name    string
		delete  []string
		wantErr error
		mention string
		left    []string
	}{
		{name: "one", delete: []string{"b"}, left: []string{"a", "c"}},
		{name: "several", delete: []string{"c", "a"}, left: []string{"b"}},
		{name: "none", delete: nil, left: []string{"a", "b", "c"}},
		{name: "one absent deletes none", delete: []string{"a", "zz", "c"}, wantErr: store.ErrNotFound, mention: `"zz"`, left: []string{"a", "b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			stored := mustCreate(t, s, a, b, c)
			rev := revision(t, s)

			err := s.DeleteEntries(ctx, tc.delete)

			all, lerr := s.ListEntries(ctx, store.EntryFilter{})
			require.NoError(t, lerr)
			require.Equal(t, tc.left, ids(all))
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.ErrorContains(t, err, tc.mention)
				require.Equal(t, rev, revision(t, s))
				return
			}
			require.NoError(t, err)
			require.Equal(t, rev+uint64(len(tc.delete)), revision(t, s))
			evs := events(t, s, rev)
			require.Len(t, evs, len(tc.delete))
			for i, id := range tc.delete {
				require.Equal(t, store.EventDeleted, evs[i].Type)
				require.Equal(t, rev+uint64(i)+1, evs[i].Revision)
				idx := slices.IndexFunc(stored, func(e store.Entry) bool { return e.ID == id })
				requireEntries(t, stored[idx:idx+1], []store.Entry{evs[i].Entry})

				_, err := s.GetEntry(ctx, id)
				require.ErrorIs(t, err, store.ErrNotFound)
				byParent, err := s.ListEntries(ctx, store.EntryFilter{ParentID: stored[idx].ParentID})
				require.NoError(t, err)
				require.NotContains(t, ids(byParent), id)
				// An equal entry may be created again.
				again := stored[idx]
				again.ID += "-again"
				mustCreate(t, s, again)
			}
		})
	}
}

func testGetEntry(t *testing.T, open Open) {
	s := open(t)
	stored := mustCreate(t, s, newEntry("a", web, parent1, "k8s:ns:shop"))
	tests := []struct {
		name    string
		id      string
		want    []store.Entry
		wantErr error
	}{
		{name: "stored", id: "a", want: stored},
		{name: "absent", id: "b", wantErr: store.ErrNotFound},
		{name: "empty id", id: "", wantErr: store.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.GetEntry(t.Context(), tc.id)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			requireEntries(t, tc.want, []store.Entry{got})
		})
	}
}

// listFixture is stored in an order other than by ID, with selectors that
// differ only in where type and value split or by a suffix.
func listFixture() []store.Entry {
	return []store.Entry{
		newEntry("c", web, parent1, "k8s:ns:shop", "k8s:sa:web"),
		newEntry("a", db, parent1, "k8s:ns:shop", "k8s:sa:db"),
		newEntry("e", web, parent2, "k8s:ns:shop", "k8s:sa:web"),
		newEntry("b", web, parent2, "unix:uid:0"),
		newEntry("d", web, parent1, "k8s:ns:shop"),
		newEntry("f", db, parent2, "k8s:ns:shop2", "k8s:sa:db"),
		{ID: "g", SPIFFEID: db, ParentID: parent1, CreatedAt: created,
			Selectors: []store.Selector{{Type: "k8s:ns", Value: "shop"}}},
	}
}

func testListEntries(t *testing.T, open Open) {
	s := open(t)
	stored := mustCreate(t, s, listFixture()...)

	tests := []struct {
		name   string
		filter store.EntryFilter
		want   []string
	}{
		{name: "all", want: []string{"a", "b", "c", "d", "e", "f", "g"}},
		{name: "spiffe id", filter: store.EntryFilter{SPIFFEID: web}, want: []string{"b", "c", "d", "e"}},
		{name: "parent", filter: store.EntryFilter{ParentID: parent2}, want: []string{"b", "e", "f"}},
		{name: "selector", filter: store.EntryFilter{Selectors: selectors("k8s:ns:shop")}, want: []string{"a", "c", "d", "e"}},
		{name: "all of two selectors", filter: store.EntryFilter{Selectors: selectors("k8s:ns:shop", "k8s:sa:web")}, want: []string{"c", "e"}},
		{name: "selectors in any order", filter: store.EntryFilter{Selectors: selectors("k8s:sa:web", "k8s:ns:shop")}, want: []string{"c", "e"}},
		{name: "type and value split elsewhere", filter: store.EntryFilter{Selectors: []store.Selector{{Type: "k8s:ns", Value: "shop"}}}, want: []string{"g"}},
		{name: "spiffe id and parent", filter: store.EntryFilter{SPIFFEID: web, ParentID: parent1}, want: []string{"c", "d"}},
		{name: "parent and selector", filter: store.EntryFilter{ParentID: parent2, Selectors: selectors("k8s:sa:db")}, want: []string{"f"}},
		{
			name:   "every filter",
			filter: store.EntryFilter{SPIFFEID: web, ParentID: parent1, Selectors: selectors("k8s:ns:shop", "k8s:sa:web")},
			want:   []string{"c"},
		},
		{name: "no match", filter: store.EntryFilter{Selectors: selectors("k8s:ns:none")}, want: nil},
		{name: "selectors nobody has together", filter: store.EntryFilter{Selectors: selectors("unix:uid:0", "k8s:ns:shop")}, want: nil},
		{name: "after id", filter: store.EntryFilter{AfterID: "c"}, want: []string{"d", "e", "f", "g"}},
		{name: "after an absent id", filter: store.EntryFilter{AfterID: "bb"}, want: []string{"c", "d", "e", "f", "g"}},
		{name: "limit", filter: store.EntryFilter{Limit: 2}, want: []string{"a", "b"}},
		{name: "after id and limit", filter: store.EntryFilter{AfterID: "b", Limit: 3}, want: []string{"c", "d", "e"}},
		{
			name:   "filter, after id and limit",
			filter: store.EntryFilter{Selectors: selectors("k8s:ns:shop"), AfterID: "a", Limit: 2},
			want:   []string{"c", "d"},
		},
		{name: "after the last", filter: store.EntryFilter{AfterID: "g"}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListEntries(t.Context(), tc.filter)
			require.NoError(t, err)
			require.Equal(t, tc.want, nilIfEmpty(ids(got)))
			for _, e := range got {
				i := slices.IndexFunc(stored, func(s store.Entry) bool { return s.ID == e.ID })
				requireEntries(t, stored[i:i+1], []store.Entry{e})
			}
		})
	}
}

// testListEntriesPaging pages through a listing and gets each entry once.
func testListEntriesPaging(t *testing.T, open Open) {
	s := open(t)
	entries := manyEntries("p", 25)
	slices.Reverse(entries)
	mustCreate(t, s, entries...)

	tests := []struct {
		name   string
		filter store.EntryFilter
	}{
		{name: "all"},
		{name: "by parent", filter: store.EntryFilter{ParentID: parent1}},
		{name: "by selector", filter: store.EntryFilter{Selectors: selectors("k8s:ns:default")}},
	}
	for _, tc := range tests {
		for _, limit := range []int{1, 4, 25, 30} {
			t.Run(fmt.Sprintf("%s limit %d", tc.name, limit), func(t *testing.T) {
				ctx := t.Context()
				full, err := s.ListEntries(ctx, tc.filter)
				require.NoError(t, err)
				require.Len(t, full, 25)
				require.True(t, slices.IsSorted(ids(full)))

				var paged []string
				f := tc.filter
				f.Limit = limit
				for {
					page, err := s.ListEntries(ctx, f)
					require.NoError(t, err)
					require.LessOrEqual(t, len(page), limit)
					if len(page) == 0 {
						break
					}
					paged = append(paged, ids(page)...)
					f.AfterID = page[len(page)-1].ID
				}
				require.Equal(t, ids(full), paged)
			})
		}
	}
}

// testWriteEntries: deletions, updates and creations in one call, each step
// seeing the earlier ones, all or none.
func testWriteEntries(t *testing.T, open Open) {
	a := newEntry("a", web, parent1, "k8s:ns:shop", "k8s:sa:web")
	b := newEntry("b", db, parent1, "k8s:ns:shop", "k8s:sa:db")
	c := newEntry("c", db, parent2, "k8s:ns:shop", "k8s:sa:db")
	moved := b // b takes c's place: equal to c, which the same call deletes
	moved.ParentID = parent2
	aAgain := a // equal to a, which the same call deletes
	aAgain.ID = "a2"
	d := newEntry("d", web, parent2, "k8s:ns:shop", "k8s:sa:web")
	dTwin := d
	dTwin.ID = "d2"
	cEqual := newEntry("e", db, parent2, "k8s:ns:shop", "k8s:sa:db")

	tests := []struct {
		name    string
		w       store.EntryWrites
		wantErr error
		mention string
		left    []string
	}{
		{name: "a delete frees what an update and a create take",
			w:    store.EntryWrites{Delete: []string{"c", "a"}, Update: []store.Entry{moved}, Create: []store.Entry{aAgain, d}},
			left: []string{"a2", "b", "d"}},
		{name: "an update conflicting with a stored entry writes nothing",
			w:       store.EntryWrites{Delete: []string{"a"}, Update: []store.Entry{moved}, Create: []store.Entry{d}},
			wantErr: store.ErrAlreadyExists, mention: `"c"`, left: []string{"a", "b", "c"}},
		{name: "a create equal to another of the call writes nothing",
			w:       store.EntryWrites{Create: []store.Entry{d, dTwin}},
			wantErr: store.ErrAlreadyExists, mention: `"d2"`, left: []string{"a", "b", "c"}},
		{name: "a create equal to a stored entry writes nothing",
			w:       store.EntryWrites{Delete: []string{"a"}, Create: []store.Entry{cEqual}},
			wantErr: store.ErrAlreadyExists, mention: `"c"`, left: []string{"a", "b", "c"}},
		{name: "an absent deletion writes nothing",
			w:       store.EntryWrites{Delete: []string{"zz"}, Create: []store.Entry{d}},
			wantErr: store.ErrNotFound, mention: `"zz"`, left: []string{"a", "b", "c"}},
		{name: "an update of a deleted entry writes nothing",
			w:       store.EntryWrites{Delete: []string{"b"}, Update: []store.Entry{moved}},
			wantErr: store.ErrNotFound, mention: `"b"`, left: []string{"a", "b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := open(t)
			mustCreate(t, s, a, b, c)
			rev := revision(t, s)

			out, err := s.WriteEntries(ctx, tc.w)

			all, lerr := s.ListEntries(ctx, store.EntryFilter{})
			require.NoError(t, lerr)
			require.Equal(t, tc.left, ids(all))
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.ErrorContains(t, err, tc.mention)
				require.Equal(t, rev, revision(t, s))
				return
			}
			require.NoError(t, err)
			n := len(tc.w.Delete) + len(tc.w.Update) + len(tc.w.Create)
			require.Equal(t, rev+uint64(n), revision(t, s))
			evs := events(t, s, rev)
			require.Len(t, evs, n)
			var types []store.EventType
			for i, ev := range evs {
				require.Equal(t, rev+uint64(i)+1, ev.Revision)
				types = append(types, ev.Type)
			}
			want := slices.Repeat([]store.EventType{store.EventDeleted}, len(tc.w.Delete))
			want = append(want, slices.Repeat([]store.EventType{store.EventUpdated}, len(tc.w.Update))...)
			want = append(want, slices.Repeat([]store.EventType{store.EventCreated}, len(tc.w.Create))...)
			require.Equal(t, want, types)
			for _, e := range append(out.Update, out.Create...) {
				got, err := s.GetEntry(ctx, e.ID)
				require.NoError(t, err)
				requireEntries(t, []store.Entry{e}, []store.Entry{got})
			}
		})
	}
}
