package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// BenchmarkRenewalStorm: 2,000 X509-SVIDs on 4 agents (500 entries each,
// all held by one open Workload API stream per agent) are first issued in
// one burst, so they all come due together: at half their 60 s life, less
// up to a tenth of it at random. It checks that every one is renewed and
// served with no error (server, agents, streams) and reports, from the
// server's issuance history, how the jitter spreads the storm: the spread
// of the first issuances against that of the renewals, the peak signing
// rate of each (any 1 s window; also per-second samples of
// tally_server_svids_issued_total), the renewals' times after the first
// one (p50, p99), and the least time an old SVID had left when renewed.
func BenchmarkRenewalStorm(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	const agentsN, perAgent, ttl = 4, 500, time.Minute
	const total = agentsN * perAgent
	// As deployed (info logs); the CA lives long enough that no CA key
	// rotates during the run.
	s := harness.StartServer(b, "--log-level", "info", "--x509-svid-ttl", ttl.String())
	agents := make([]*harness.AgentProc, agentsN)
	for i := range agents {
		agents[i] = harness.StartAgent(b, s, "", "--log-level", "info")
	}
	uid := fmt.Sprintf("uid:%d", os.Getuid())
	ids := map[string]bool{} // every storm SPIFFE ID
	for i, a := range agents {
		es := make([]*tallyv1.Entry, perAgent)
		for j := range es {
			id := fmt.Sprintf("spiffe://example.org/storm/%d/%d", i, j)
			ids[id] = true
			es[j] = &tallyv1.Entry{SpiffeId: id, ParentId: a.ID(b).String(), Selectors: []*tallyv1.Selector{{Type: "unix", Value: uid}}}
		}
		_, err := s.Admin(b).BatchCreateEntries(context.Background(), &tallyv1.BatchCreateEntriesRequest{Entries: es})
		require.NoError(b, err)
	}
	errors0 := jwtFloodMetric(b, s.HealthAddr, "tally_server_svids_issued_total", `type="x509"`, `result="error"`)

	// One stream per agent holds its 500 SVIDs: the agent mints them at
	// once and renews them as they come due.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	streams := make([]*stormStream, agentsN)
	for i, a := range agents {
		streams[i] = openStormStream(ctx, b, a.Addr(), perAgent)
	}
	defer func() {
		cancel()
		for _, st := range streams {
			st.wait()
		}
	}()
	for i, st := range streams {
		require.Eventually(b, func() bool { return st.served() == perAgent }, 2*time.Minute, 50*time.Millisecond,
			"agent %d serves its %d SVIDs: %v", i, perAgent, st.err())
	}

	// Sample the server's issuance counter every second until every SVID
	// has been renewed once.
	var samples []float64
	var first, renewal map[string]*tallyv1.Issuance
	tick := time.NewTicker(time.Second)
	for deadline := time.Now().Add(3 * ttl); ; <-tick.C {
		samples = append(samples, jwtFloodMetric(b, s.HealthAddr, "tally_server_svids_issued_total", `type="x509"`, `result="ok"`))
		if len(samples)%2 == 1 {
			continue // the history every other second
		}
		if first, renewal = stormHistory(b, s, ids); len(renewal) == total || time.Now().After(deadline) {
			break
		}
	}
	tick.Stop()
	require.Len(b, first, total, "every SVID was issued")
	require.Len(b, renewal, total, "every SVID was renewed within %s", 3*ttl)
	for i, st := range streams {
		require.Eventually(b, func() bool { return st.servesOnly(renewal) }, time.Minute, 100*time.Millisecond,
			"agent %d serves the renewed SVIDs: %v", i, st.err())
		require.NoError(b, st.err(), "agent %d's stream", i)
	}

	// No error anywhere.
	require.Zero(b, jwtFloodMetric(b, s.HealthAddr, "tally_server_svids_issued_total", `type="x509"`, `result="error"`)-errors0,
		"server signing errors")
	require.Zero(b, stormFailures(b, s), "failed issuances in the server's history")
	for i, a := range agents {
		require.Zero(b, jwtFloodMetric(b, a.HealthAddr, "tally_agent_svids_minted_total", `type="x509"`, `result="error"`), "agent %d mint errors", i)
		require.Zero(b, jwtFloodMetric(b, a.HealthAddr, "tally_agent_svid_rotation_failures_total"), "agent %d rotation failures", i)
	}

	firstAt, renewedAt := issuedTimes(first), issuedTimes(renewal)
	minLeft := time.Duration(1<<63 - 1)
	for id, r := range renewal {
		minLeft = min(minLeft, time.Unix(first[id].GetNotAfter(), 0).Sub(time.Unix(0, r.GetIssuedAtUnixNano())))
	}
	stormStart := renewedAt[0]
	offsets := make([]time.Duration, len(renewedAt))
	for i, t := range renewedAt {
		offsets[i] = t.Sub(stormStart)
	}
	spread := offsets[len(offsets)-1]
	peak := peakRate(renewedAt, time.Second)
	var samplePeak float64
	for i := 1; i < len(samples); i++ {
		samplePeak = max(samplePeak, samples[i]-samples[i-1])
	}
	secs := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	table(b, fmt.Sprintf("X509-SVID renewal storm: %d SVIDs on %d agents, %s life, issued together (one run)", total, agentsN, ttl),
		"measure\tresult", []string{
			fmt.Sprintf("SVIDs renewed and served, of %d\t%d", total, len(renewal)),
			"errors (server signing, history, agent mints and rotations, streams)\t0",
			fmt.Sprintf("first issuance: spread (first → last)\t%s", secs(firstAt[len(firstAt)-1].Sub(firstAt[0]))),
			fmt.Sprintf("first issuance: peak signing rate (any 1 s)\t%d/s", peakRate(firstAt, time.Second)),
			fmt.Sprintf("renewal: spread (first → last)\t%s", secs(spread)),
			fmt.Sprintf("renewal: time after the first renewal, p50 / p99\t%s / %s", secs(quantile(offsets, 0.50)), secs(quantile(offsets, 0.99))),
			fmt.Sprintf("renewal: peak signing rate (any 1 s)\t%d/s", peak),
			fmt.Sprintf("renewal: mean signing rate over the spread\t%.0f/s", float64(total)/max(spread.Seconds(), 1)),
			fmt.Sprintf("peak of tally_server_svids_issued_total, sampled every 1 s (all issuance)\t%.0f/s", samplePeak),
			fmt.Sprintf("least time an old SVID had left when renewed\t%s", secs(minLeft)),
		})
	b.ReportMetric(float64(len(renewal)), "renewed")
	b.ReportMetric(float64(peak), "peak_signs/s")
	b.ReportMetric(spread.Seconds(), "spread_s")
	b.ReportMetric(quantile(offsets, 0.99).Seconds(), "p99_s")
}

// stormStream is an open FetchX509SVID stream that keeps the serials of
// the last update it received.
type stormStream struct {
	done chan struct{}

	mu      sync.Mutex
	serials map[string]string // SPIFFE ID → serial (hex), as last served
	lastErr error
}

// openStormStream opens a stream on the agent at addr and receives on it
// until ctx ends. A caller whose entries the agent has not synced yet is
// refused: it retries until it is served want SVIDs or ctx ends.
func openStormStream(ctx context.Context, t testing.TB, addr string, want int) *stormStream {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	st := &stormStream{done: make(chan struct{})}
	go func() {
		defer close(st.done)
		for ctx.Err() == nil {
			stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			for err == nil {
				var resp *workload.X509SVIDResponse
				if resp, err = stream.Recv(); err == nil {
					st.update(resp)
				}
			}
			if ctx.Err() != nil {
				return
			}
			st.mu.Lock()
			served := len(st.serials)
			if served >= want {
				st.lastErr = err // a stream that served everything must not end
			}
			st.mu.Unlock()
			if served >= want {
				return
			}
			time.Sleep(100 * time.Millisecond) // not synced yet
		}
	}()
	return st
}

func (st *stormStream) update(resp *workload.X509SVIDResponse) {
	serials := make(map[string]string, len(resp.GetSvids()))
	var bad error
	for _, s := range resp.GetSvids() {
		chain, err := x509.ParseCertificates(s.GetX509Svid())
		if err != nil || len(chain) == 0 {
			bad = fmt.Errorf("%s: bad chain: %v", s.GetSpiffeId(), err)
			continue
		}
		serials[s.GetSpiffeId()] = chain[0].SerialNumber.Text(16)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.serials = serials
	if bad != nil {
		st.lastErr = bad
	}
}

// served is how many SVIDs the last update carried.
func (st *stormStream) served() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.serials)
}

// servesOnly reports whether the last update carried, for every SPIFFE ID
// it served, the serial issued in want.
func (st *stormStream) servesOnly(want map[string]*tallyv1.Issuance) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.serials) == 0 {
		return false
	}
	for id, serial := range st.serials {
		if want[id].GetSerial() != serial {
			return false
		}
	}
	return true
}

func (st *stormStream) err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.lastErr
}

func (st *stormStream) wait() { <-st.done }

// stormHistory returns, from the server's issuance history, the first and
// the second X509-SVID issued for each of ids.
func stormHistory(t testing.TB, s *harness.Server, ids map[string]bool) (first, second map[string]*tallyv1.Issuance) {
	t.Helper()
	resp, err := s.Admin(t).ListIssuances(context.Background(), &tallyv1.ListIssuancesRequest{Limit: 10_000})
	require.NoError(t, err)
	evs := resp.GetIssuances()
	require.Less(t, len(evs), 10_000, "the history holds more than the storm: the oldest are missing")
	first, second = map[string]*tallyv1.Issuance{}, map[string]*tallyv1.Issuance{}
	for i := len(evs) - 1; i >= 0; i-- { // oldest first
		e := evs[i]
		if e.GetKind() != "x509" || !ids[e.GetSpiffeId()] || strings.HasPrefix(e.GetDetail(), "failed: ") {
			continue
		}
		if _, ok := first[e.GetSpiffeId()]; !ok {
			first[e.GetSpiffeId()] = e
		} else if _, ok := second[e.GetSpiffeId()]; !ok {
			second[e.GetSpiffeId()] = e
		}
	}
	return first, second
}

// stormFailures counts the failed X509-SVID issuances in the server's
// history.
func stormFailures(t testing.TB, s *harness.Server) int {
	t.Helper()
	resp, err := s.Admin(t).ListIssuances(context.Background(), &tallyv1.ListIssuancesRequest{Limit: 10_000})
	require.NoError(t, err)
	n := 0
	for _, e := range resp.GetIssuances() {
		if e.GetKind() == "x509" && strings.HasPrefix(e.GetDetail(), "failed: ") {
			n++
		}
	}
	return n
}

// issuedTimes are the issuance times of evs, sorted.
func issuedTimes(evs map[string]*tallyv1.Issuance) []time.Time {
	out := make([]time.Time, 0, len(evs))
	for _, e := range evs {
		out = append(out, time.Unix(0, e.GetIssuedAtUnixNano()))
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// peakRate is the most of the sorted times in any window of length w.
func peakRate(times []time.Time, w time.Duration) int {
	peak, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= w {
			j++
		}
		peak = max(peak, i-j+1)
	}
	return peak
}

// quantile is the q-quantile of the sorted durations d (nearest rank).
func quantile(d []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(d))+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}
