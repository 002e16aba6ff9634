package dashboard

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/browsertest"
)

const (
	benchWorkloads = 10_000
	benchAgents    = 100
)

// BenchmarkDashboardOverviewJSON is the handler's work for one generation of
// 10,000 workloads on 100 agents: the snapshot (sorted into the page's
// order, each workload hashed), then the full overview encoded and gzipped
// (for a page that opens), then a delta of 50 renewals (for each open page).
func BenchmarkDashboardOverviewJSON(b *testing.B) {
	now := time.Now()
	o, buckets := fleet(now, benchWorkloads, benchAgents)
	b.Run("full", func(b *testing.B) {
		var full *body
		for b.Loop() {
			var err error
			full, err = newSnapshot(1, 1, now, o, buckets).fullBody()
			require.NoError(b, err)
		}
		b.ReportMetric(float64(len(full.raw)), "json-bytes")
		b.ReportMetric(float64(len(full.gz)), "gzip-bytes")
	})
	b.Run("delta", func(b *testing.B) {
		base := newSnapshot(1, 1, now, o, buckets)
		next := o
		next.Workloads = slices.Clone(o.Workloads)
		for i := range 50 {
			w := &next.Workloads[i*(len(next.Workloads)/50)]
			w.Serial, w.Renewals, w.NotAfter = fmt.Sprintf("%032x", i), w.Renewals+1, w.NotAfter.Add(30*time.Minute)
		}
		var delta *body
		for b.Loop() {
			var err error
			delta, err = newSnapshot(2, 2, now, next, buckets).deltaBody(base)
			require.NoError(b, err)
		}
		b.ReportMetric(float64(len(delta.raw)), "json-bytes")
		b.ReportMetric(float64(len(delta.gz)), "gzip-bytes")
	})
}

// BenchmarkDashboardBrowser measures, in headless Chromium with 10,000
// workloads on 100 agents, with the Performance API: the first paint and the
// first render with the data after a navigation, and a full refresh (an
// event, the overview fetched, parsed and every panel rendered again).
func BenchmarkDashboardBrowser(b *testing.B) {
	now := time.Now()
	o, buckets := fleet(now, benchWorkloads, benchAgents)
	s := startServer(b, newFakeSource(o, buckets), clock.RealClock{}, now.Add(time.Hour),
		func(c *Config) { c.MinInterval = 20 * time.Millisecond })
	br := browsertest.New(b, browsertest.Config{TrustCA: s.Web.CAFile()})
	signIn(b, br, s.URL)

	type stats struct{ FetchMs, ParseMs, RenderMs float64 }
	report := func(b *testing.B, st []stats) {
		var f, p, r float64
		for _, x := range st {
			f, p, r = f+x.FetchMs, p+x.ParseMs, r+x.RenderMs
		}
		n := float64(len(st))
		b.ReportMetric(f/n, "fetch-ms")
		b.ReportMetric(p/n, "parse-ms")
		b.ReportMetric(r/n, "render-ms")
	}

	b.Run("first-render", func(b *testing.B) {
		var fcp, first, transfer float64
		var st []stats
		for b.Loop() {
			require.NoError(b, br.Navigate(s.URL+Prefix))
			br.WaitJS(b, `performance.getEntriesByName("tally:first-render").length > 0`, 30*time.Second)
			fcp += browsertest.Eval[float64](b, br, `performance.getEntriesByName("first-contentful-paint")[0].startTime`)
			first += browsertest.Eval[float64](b, br, `performance.getEntriesByName("tally:first-render")[0].startTime`)
			transfer = browsertest.Eval[float64](b, br, `performance.getEntriesByType("resource").filter(e => e.name.endsWith("api/overview")).pop().encodedBodySize`)
			st = append(st, browsertest.Eval[stats](b, br, `({FetchMs: tallyStats.fetchMs, ParseMs: tallyStats.parseMs, RenderMs: tallyStats.renderMs})`))
		}
		n := float64(len(st))
		b.ReportMetric(fcp/n, "first-paint-ms")
		b.ReportMetric(first/n, "first-render-ms")
		b.ReportMetric(transfer, "overview-transfer-bytes")
		report(b, st)
		b.ReportMetric(0, "ns/op")
	})

	b.Run("refresh", func(b *testing.B) {
		require.NoError(b, br.Navigate(s.URL+Prefix))
		br.WaitJS(b, `document.body.dataset.gen`, 30*time.Second)
		var total float64
		var st []stats
		i := 0
		for b.Loop() {
			i++
			gen := browsertest.Eval[string](b, br, `document.body.dataset.gen`)
			s.Source.update(func(o *Overview, _ *[]Bucket) {
				o.Workloads[i%len(o.Workloads)].Serial = fmt.Sprintf("%032x", i)
				o.Workloads[i%len(o.Workloads)].Renewals++
			})
			br.WaitJS(b, `document.body.dataset.gen !== "`+gen+`" && performance.getEntriesByName("tally:refresh").length > 0`, 30*time.Second)
			total += browsertest.Eval[float64](b, br, `(() => { const m = performance.getEntriesByName("tally:refresh").pop(); performance.clearMeasures("tally:refresh"); return m.duration; })()`)
			st = append(st, browsertest.Eval[stats](b, br, `({FetchMs: tallyStats.fetchMs, ParseMs: tallyStats.parseMs, RenderMs: tallyStats.renderMs})`))
		}
		b.Logf("last refresh: %s", browsertest.Eval[string](b, br, `JSON.stringify(tallyStats)`))
		b.ReportMetric(total/float64(len(st)), "refresh-ms")
		report(b, st)
		b.ReportMetric(0, "ns/op")
	})
}
