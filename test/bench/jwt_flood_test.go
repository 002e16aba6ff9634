package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/spire"
)

// jwtFloodDuration is how long BenchmarkJWTAudienceFlood floods each agent:
// $TALLY_BENCH_FLOOD_SECONDS, default 20, at most 120.
func jwtFloodDuration(t testing.TB) time.Duration {
	v := os.Getenv("TALLY_BENCH_FLOOD_SECONDS")
	if v == "" {
		return 20 * time.Second
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "TALLY_BENCH_FLOOD_SECONDS")
	require.True(t, n > 0 && n <= 120, "TALLY_BENCH_FLOOD_SECONDS must be 1..120, got %d", n)
	return time.Duration(n) * time.Second
}

type jwtFloodResult struct {
	served, exhausted, failed int64
	elapsed                   time.Duration
	rssBefore, rssPeak        int64
	rssAfter, rssSettled      int64
	agentCPU                  time.Duration
}

// jwtFlood: one process, callers concurrent callers on one connection, each
// asking for JWT-SVIDs with a fresh audience as fast as it is answered, for
// d. It samples the agent's RSS every 250 ms.
func jwtFlood(t testing.TB, addr string, agentPID, callers int, d time.Duration) jwtFloodResult {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true")

	res := jwtFloodResult{rssBefore: harness.RSSOf(t, agentPID)}
	cpu0 := harness.CPUOf(t, agentPID)
	var served, exhausted, failed, seq atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				aud := fmt.Sprintf("flood-%d-%d", seq.Add(1), start.UnixNano())
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := client.FetchJWTSVID(cctx, &workload.JWTSVIDRequest{Audience: []string{aud}})
				cancel()
				switch {
				case err == nil:
					served.Add(1)
				case status.Code(err) == codes.ResourceExhausted:
					exhausted.Add(1)
				default:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	res.rssPeak = res.rssBefore
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		res.rssPeak = max(res.rssPeak, harness.RSSOf(t, agentPID))
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.agentCPU = harness.CPUOf(t, agentPID) - cpu0
	res.rssAfter = harness.RSSOf(t, agentPID)
	res.rssPeak = max(res.rssPeak, res.rssAfter)
	time.Sleep(5 * time.Second)
	res.rssSettled = harness.RSSOf(t, agentPID)
	res.served, res.exhausted, res.failed = served.Load(), exhausted.Load(), failed.Load()
	if err, ok := firstErr.Load().(error); ok {
		t.Logf("first unexpected error of %d: %v", res.failed, err)
	}
	return res
}

// jwtFloodMetric adds up the samples of name with every one of labels from
// http://addr/metrics (0 if there is none).
func jwtFloodMetric(t testing.TB, addr, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	sum := 0.0
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		metric, lbls, _ := strings.Cut(line[:sp], "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(lbls, l)
		}
		if match {
			v, err := strconv.ParseFloat(line[sp+1:], 64)
			require.NoError(t, err, line)
			sum += v
		}
	}
	return sum
}

// BenchmarkJWTAudienceFlood repeats the attack of the JWT-SVID audience
// issue on Tally's agent and on SPIRE v1.13.3's, one after the other in one
// run, both as deployed (Tally: jwt_cache_size 1000, 10 fresh JWT-SVIDs/s
// and bursts of 50 per identity; SPIRE: its 1,000-token LRU, no rate
// limit): one process of an identity, 50 concurrent callers, fresh
// audiences as fast as they are answered, for 20 s. It reports each agent's
// RSS and the JWT-SVIDs its server signed.
//
// Server signings: Tally's from the server's tally_server_svids_issued_total
// {type="jwt"}; SPIRE's are the requests it served, as every fresh audience
// is a miss of its agent's cache and one NewJWTSVID call to its server.
func BenchmarkJWTAudienceFlood(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	const callers = 50
	d := jwtFloodDuration(b)
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	s := harness.StartServer(b, "--log-level", "info")
	tally := tallyDeployment{s: s, a: harness.StartAgent(b, s, "", "--log-level", "info")}
	sp := spireDeployment{spire.Start(b, spire.Options{})}

	results := map[string]jwtFloodResult{}
	signed := map[string]float64{}
	var tallyCached, tallyLimited float64
	for _, dep := range []deployment{tally, sp} {
		dep.create(b, []string{"spiffe://example.org/bench/flood"}, uid)
		require.Eventually(b, func() bool { // SPIRE syncs every 5 s
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(dep.addr()))
			return err == nil
		}, time.Minute, 200*time.Millisecond)
		time.Sleep(2 * time.Second)

		var before float64
		if dep.name() == "Tally" {
			before = jwtFloodMetric(b, s.HealthAddr, "tally_server_svids_issued_total", `type="jwt"`)
		}
		r := jwtFlood(b, dep.addr(), dep.agentPID(), callers, d)
		results[dep.name()] = r
		if dep.name() == "Tally" {
			signed["Tally"] = jwtFloodMetric(b, s.HealthAddr, "tally_server_svids_issued_total", `type="jwt"`) - before
			tallyCached = jwtFloodMetric(b, tally.a.HealthAddr, "tally_agent_jwt_cache_entries")
			tallyLimited = jwtFloodMetric(b, tally.a.HealthAddr, "tally_agent_jwt_mints_limited_total")
		} else {
			signed["SPIRE"] = float64(r.served)
		}
	}

	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	type row struct {
		name string
		f    func(string) float64
	}
	rows := []row{
		{"requests answered (per s)", func(n string) float64 {
			r := results[n]
			return float64(r.served+r.exhausted+r.failed) / r.elapsed.Seconds()
		}},
		{"JWT-SVIDs served", func(n string) float64 { return float64(results[n].served) }},
		{"ResourceExhausted", func(n string) float64 { return float64(results[n].exhausted) }},
		{"other errors", func(n string) float64 { return float64(results[n].failed) }},
		{"server signings", func(n string) float64 { return signed[n] }},
		{"agent RSS before (MiB)", func(n string) float64 { return mib(results[n].rssBefore) }},
		{"agent RSS peak (MiB)", func(n string) float64 { return mib(results[n].rssPeak) }},
		{"agent RSS at the end (MiB)", func(n string) float64 { return mib(results[n].rssAfter) }},
		{"agent RSS 5 s later (MiB)", func(n string) float64 { return mib(results[n].rssSettled) }},
		{"agent RSS growth, peak - before (MiB)", func(n string) float64 { return mib(results[n].rssPeak - results[n].rssBefore) }},
		{"agent CPU (s)", func(n string) float64 { return results[n].agentCPU.Seconds() }},
	}
	var lines []string
	for _, r := range rows {
		t, sp := r.f("Tally"), r.f("SPIRE")
		ratio := "-"
		if sp != 0 {
			ratio = fmt.Sprintf("%.2f", t/sp)
		}
		lines = append(lines, fmt.Sprintf("%s\t%.1f\t%.1f\t%s", r.name, t, sp, ratio))
	}
	table(b, fmt.Sprintf("JWT-SVID audience flood: 1 process, %d callers, fresh audiences for %s; Tally vs SPIRE v1.13.3, same run", callers, d),
		"measure\tTally\tSPIRE\tTally/SPIRE", lines)
	note(b, fmt.Sprintf("Tally as deployed: jwt_cache_size 1000, jwt_mint_rate 10/s, jwt_mint_burst 50 per SPIFFE ID: at most %.0f signings in %s; "+
		"its agent ended with %.0f cached JWT-SVIDs and counted %.0f limited requests. "+
		"SPIRE's signings are its served requests (every fresh audience is a miss of its agent's cache).",
		50+10*results["Tally"].elapsed.Seconds(), results["Tally"].elapsed.Round(time.Millisecond), tallyCached, tallyLimited))
	require.LessOrEqual(b, signed["Tally"], 50+10*results["Tally"].elapsed.Seconds(), "Tally signed beyond burst + rate × elapsed")
}
