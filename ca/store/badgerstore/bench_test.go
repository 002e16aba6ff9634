package badgerstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store"
)

// benchEntry is a typical workload entry: a pod of a Kubernetes service
// account on one node.
func benchEntry(id string) store.Entry {
	return store.Entry{
		ID:       id,
		SPIFFEID: "spiffe://example.org/ns/default/sa/" + id,
		ParentID: "spiffe://example.org/tally/agent/k8s_psat/prod/0f4a7c2e-1b7d-4d8e-9a51-3c2b1e0d9f6a",
		Selectors: []store.Selector{
			{Type: "k8s", Value: "ns:default"},
			{Type: "k8s", Value: "sa:" + id},
		},
		X509TTL: 3600e9,
	}
}

func benchEntries(prefix string, n int) []store.Entry {
	out := make([]store.Entry, n)
	for i := range out {
		out[i] = benchEntry(fmt.Sprintf("%s-%06d", prefix, i))
	}
	return out
}

// BenchmarkCreateEntries10kBatch creates 10,000 entries per call into a
// store that grows with every iteration.
func BenchmarkCreateEntries10kBatch(b *testing.B) {
	s := openDir(b, b.TempDir())
	n := 0
	for i := 0; b.Loop(); i++ {
		_, err := s.CreateEntries(b.Context(), benchEntries(fmt.Sprintf("b%d", i), 10_000))
		require.NoError(b, err)
		n += 10_000
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkCreateEntries10kOneByOne creates 10,000 entries with one call
// (one synced transaction) each.
func BenchmarkCreateEntries10kOneByOne(b *testing.B) {
	s := openDir(b, b.TempDir())
	n := 0
	for i := 0; b.Loop(); i++ {
		for _, e := range benchEntries(fmt.Sprintf("o%d", i), 10_000) {
			_, err := s.CreateEntries(b.Context(), []store.Entry{e})
			require.NoError(b, err)
		}
		n += 10_000
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkOpen100k opens a store of 100,000 entries and lists them all.
func BenchmarkOpen100k(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(Config{Dir: dir})
	require.NoError(b, err)
	for i := range 10 {
		_, err := s.CreateEntries(b.Context(), benchEntries(fmt.Sprintf("b%d", i), 10_000))
		require.NoError(b, err)
	}
	require.NoError(b, s.Close())

	var opening, listing time.Duration
	for b.Loop() {
		start := time.Now()
		s, err := Open(Config{Dir: dir})
		require.NoError(b, err)
		opened := time.Now()
		all, err := s.ListEntries(b.Context(), store.EntryFilter{})
		require.NoError(b, err)
		opening, listing = opening+opened.Sub(start), listing+time.Since(opened)
		require.Len(b, all, 100_000)
		require.NoError(b, s.Close())
	}
	b.ReportMetric(float64(opening.Milliseconds())/float64(b.N), "open-ms/op")
	b.ReportMetric(float64(listing.Milliseconds())/float64(b.N), "list-ms/op")
}
