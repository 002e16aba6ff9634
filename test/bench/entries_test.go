package bench

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

func entries(prefix string, from, n int) []*tallyv1.Entry {
	out := make([]*tallyv1.Entry, n)
	for i := range n {
		out[i] = &tallyv1.Entry{
			SpiffeId:  fmt.Sprintf("spiffe://example.org/%s/%d", prefix, from+i),
			ParentId:  "spiffe://example.org/bench/agent",
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 100000+from+i)}},
		}
	}
	return out
}

// sameSelector is SPIRE's worst case: every entry shares parent and selector.
func sameSelector(prefix string, n int) []*tallyv1.Entry {
	out := entries(prefix, 0, n)
	for _, e := range out {
		e.Selectors = []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}}
	}
	return out
}

// BenchmarkServerEntries: 10,000 entry creates in one batch and one by one
// (distinct and shared selectors), and a 100,000-entry store: create rate,
// server start to ready, RSS.
func BenchmarkServerEntries(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	ctx := context.Background()
	var rows []string
	add := func(what string, value string) { rows = append(rows, what+"\t"+value) }

	create := func(s *harness.Server, batches [][]*tallyv1.Entry) time.Duration {
		admin := s.Admin(b)
		start := time.Now()
		for _, batch := range batches {
			_, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: batch})
			require.NoError(b, err)
		}
		return time.Since(start)
	}
	oneByOne := func(es []*tallyv1.Entry) [][]*tallyv1.Entry {
		out := make([][]*tallyv1.Entry, len(es))
		for i, e := range es {
			out[i] = []*tallyv1.Entry{e}
		}
		return out
	}
	perSec := func(n int, d time.Duration) string {
		return fmt.Sprintf("%.1f s (%.0f entries/s)", d.Seconds(), float64(n)/d.Seconds())
	}

	s := harness.StartServer(b, "--log-level", "info") // as deployed; the harness default is debug
	add("server RSS idle", mib(s.RSS(b)))
	d := create(s, [][]*tallyv1.Entry{entries("batch", 0, 10_000)})
	add("10,000 entries, one batch, distinct selectors", perSec(10_000, d))
	d = create(s, oneByOne(entries("single", 0, 10_000)))
	add("10,000 entries, one by one, distinct selectors (onto 10k)", perSec(10_000, d))
	d = create(s, [][]*tallyv1.Entry{sameSelector("same", 10_000)})
	add("10,000 entries, one batch, one shared selector (onto 20k)", perSec(10_000, d))
	d = create(s, oneByOne(sameSelector("same1", 10_000)))
	add("10,000 entries, one by one, one shared selector (onto 30k)", perSec(10_000, d))
	add("server RSS with 40,000 entries", mib(s.RSS(b)))

	// Grow to 100,000 entries, then restart: start to ready, RSS.
	var batches [][]*tallyv1.Entry
	for i := 40_000; i < 100_000; i += 10_000 {
		batches = append(batches, entries("big", i, 10_000))
	}
	d = create(s, batches)
	add("60,000 more entries in batches of 10,000 (40k → 100k)", perSec(60_000, d))
	add("server RSS with 100,000 entries", mib(s.RSS(b)))
	s.Stop(b)
	start := time.Now()
	s.Start(b)
	add("server start → ready with 100,000 entries", fmt.Sprintf("%.2f s", time.Since(start).Seconds()))
	add("server RSS after restart with 100,000 entries", mib(s.RSS(b)))
	resp, err := http.Get("http://" + s.HealthAddr + "/readyz")
	require.NoError(b, err)
	resp.Body.Close()

	table(b, "Registration entries (real server, real badger, gRPC over the admin Unix socket)", "scenario\tresult", rows)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
