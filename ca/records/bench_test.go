package records

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// events returns n issuances of distinct identities in the shape the Node
// API records them: 10 agents, 128-bit serials, one signing key.
func events(n int) []Event {
	out := make([]Event, n)
	for i := range out {
		out[i] = Event{Kind: KindX509, SPIFFEID: fmt.Sprintf("spiffe://example.org/ns/team-%d/sa/service-%d", i%50, i),
			Serial: fmt.Sprintf("%032x", uint64(i)*0x9e3779b97f4a7c15), AgentID: fmt.Sprintf("spiffe://example.org/tally/agent/k8s_psat/prod/node-%d", i%10),
			EntryID: fmt.Sprintf("%026d", i), NotBefore: t0, NotAfter: t0.Add(time.Hour), KeyID: "3f1a9c0d2b4e6f8a1c3e5f7a9b0d2c4e6f8a1b3c", Renewal: true}
	}
	return out
}

// BenchmarkRecord records issuances of 10,000 identities, each renewed in
// turn.
func BenchmarkRecord(b *testing.B) {
	clk := clocktesting.NewFakeClock(t0)
	r := New(Config{Clock: clk})
	evs := events(10_000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e := evs[i%len(evs)]
		e.At = t0.Add(time.Duration(i) * time.Millisecond)
		r.Record(e)
	}
}

// BenchmarkRecordMillion records 1,000,000 issuances with a default Recorder
// and reports the live heap it holds then (heap-MB), against the heap before
// (base-MB): a day at a million issuances a day. With 1,000,000 distinct
// identities (distinct=1M) every string is new, the worst case for the
// index and the strings; with 10,000 (distinct=10k) each is renewed 100
// times, the usual case.
func BenchmarkRecordMillion(b *testing.B) {
	for _, distinct := range []int{10_000, 1_000_000} {
		b.Run(fmt.Sprintf("distinct=%s", map[int]string{10_000: "10k", 1_000_000: "1M"}[distinct]), func(b *testing.B) {
			evs := events(distinct)
			for b.Loop() {
				base := liveHeap()
				r := New(Config{Clock: clocktesting.NewFakeClock(t0)})
				for i := range 1_000_000 {
					e := evs[i%len(evs)]
					e.At = t0.Add(time.Duration(i) * 86400 * time.Microsecond) // spread over a day
					r.Record(e)
				}
				heap := liveHeap()
				b.ReportMetric(float64(base)/(1<<20), "base-MB")
				b.ReportMetric(float64(heap-base)/(1<<20), "heap-MB")
				st := r.Stats()
				b.ReportMetric(float64(st.Strings), "strings")
				runtime.KeepAlive(r)
			}
		})
	}
}

func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkList finds one identity's events in a full ring.
func BenchmarkList(b *testing.B) {
	r := New(Config{Clock: clocktesting.NewFakeClock(t0)})
	evs := events(10_000)
	for i := range DefaultSize {
		r.Record(evs[i%len(evs)])
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = r.List(evs[42].SPIFFEID, 100)
	}
}
