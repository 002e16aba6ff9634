// Package storetest is the conformance suite of store.Store: every
// implementation runs it against a real instance.
package storetest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store"
)

// Open returns a new, empty store and registers its Close with t.Cleanup.
type Open func(t *testing.T) store.Store

// Run runs the suite, each test on a store of its own from open.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		run  func(t *testing.T, open Open)
	}{
		{"CreateEntries", testCreateEntries},
		{"CreateEntriesLargeBatch", testCreateEntriesLargeBatch},
		{"UpdateEntry", testUpdateEntry},
		{"DeleteEntries", testDeleteEntries},
		{"WriteEntries", testWriteEntries},
		{"GetEntry", testGetEntry},
		{"ListEntries", testListEntries},
		{"ListEntriesPaging", testListEntriesPaging},
		{"Events", testEvents},
		{"PruneEvents", testPruneEvents},
		{"ConcurrentWritersAndReader", testConcurrentWritersAndReader},
		{"Agents", testAgents},
		{"JoinTokens", testJoinTokens},
		{"ConsumeJoinTokenRace", testConsumeJoinTokenRace},
		{"PruneJoinTokens", testPruneJoinTokens},
		{"JournalAndBundle", testJournalAndBundle},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, open) })
	}
}

// created is a CreatedAt that every implementation stores exactly.
var created = time.Unix(1_800_000_000, 0).UTC()

// newEntry builds an entry; sels are "type:value".
func newEntry(id, spiffeID, parentID string, sels ...string) store.Entry {
	return store.Entry{
		ID:        id,
		SPIFFEID:  spiffeID,
		ParentID:  parentID,
		Selectors: selectors(sels...),
		X509TTL:   time.Hour,
		CreatedAt: created,
	}
}

// selectors parses "type:value" strings.
func selectors(sels ...string) []store.Selector {
	out := make([]store.Selector, len(sels))
	for i, s := range sels {
		typ, value, _ := strings.Cut(s, ":")
		out[i] = store.Selector{Type: typ, Value: value}
	}
	return out
}

// manyEntries returns n distinct entries with IDs prefix-000000 and on.
func manyEntries(prefix string, n int) []store.Entry {
	out := make([]store.Entry, n)
	for i := range out {
		id := fmt.Sprintf("%s-%06d", prefix, i)
		out[i] = newEntry(id, "spiffe://example.org/w/"+id, "spiffe://example.org/tally/agent/n1",
			"k8s:ns:default", "k8s:sa:"+id)
	}
	return out
}

// normalize makes entries comparable with require.Equal whatever time zone
// an implementation returns times in.
func normalize(entries ...store.Entry) []store.Entry {
	out := slices.Clone(entries)
	for i := range out {
		out[i].CreatedAt = out[i].CreatedAt.UTC()
	}
	return out
}

func requireEntries(t *testing.T, want, got []store.Entry) {
	t.Helper()
	if len(want) == 0 && len(got) == 0 {
		return
	}
	require.Equal(t, normalize(want...), normalize(got...))
}

func ids(entries []store.Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.ID
	}
	return out
}

// mustCreate stores entries and returns them with their revisions.
func mustCreate(t *testing.T, s store.Store, entries ...store.Entry) []store.Entry {
	t.Helper()
	out, err := s.CreateEntries(t.Context(), entries)
	require.NoError(t, err)
	return out
}

func revision(t *testing.T, s store.Store) uint64 {
	t.Helper()
	rev, err := s.Revision(t.Context())
	require.NoError(t, err)
	return rev
}

func events(t *testing.T, s store.Store, after uint64) []store.Event {
	t.Helper()
	evs, err := s.Events(t.Context(), after, 0)
	require.NoError(t, err)
	return evs
}

func revisions(evs []store.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Revision
	}
	return out
}

// seq returns from, from+1, …, to.
func seq(from, to uint64) []uint64 {
	var out []uint64
	for r := from; r <= to; r++ {
		out = append(out, r)
	}
	return out
}
