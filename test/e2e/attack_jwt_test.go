package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// TestAttackJWTAudienceFlood: a workload with an identity asks for
// JWT-SVIDs with many fresh audiences at once, to grow the agent's memory
// and have the server sign without end. The agent mints at most burst +
// rate × elapsed of them, answers the rest ResourceExhausted, never caches
// more than jwt_cache_size, and keeps serving the audiences it has cached.
func TestAttackJWTAudienceFlood(t *testing.T) {
	t.Parallel()
	const (
		cacheSize = 5
		burst     = 20
		perSecond = 0.001 // no refill within the test: every count below is exact
		callers   = 50
		each      = 8
	)
	// JWT-SVIDs of an hour: cached for 30 minutes, longer than any run of
	// this test, so that no cached token goes stale during it.
	s := harness.StartServer(t, "--jwt-svid-ttl", "1h")
	a := harness.StartAgent(t, s, "", "--jwt-cache-size", strconv.Itoa(cacheSize),
		"--jwt-mint-burst", strconv.Itoa(burst), "--jwt-mint-rate", strconv.FormatFloat(perSecond, 'f', -1, 64))
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/flood", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fetchOnceSynced(t, ctx, a.Addr())

	conn, err := grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	hdr := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	fetch := func(aud string) (string, error) {
		resp, err := client.FetchJWTSVID(hdr, &workload.JWTSVIDRequest{Audience: []string{aud}})
		if err != nil {
			return "", err
		}
		if n := len(resp.GetSvids()); n != 1 {
			return "", fmt.Errorf("%d JWT-SVIDs", n)
		}
		return resp.GetSvids()[0].GetSvid(), nil
	}

	signedBefore := jwtFloodScrape(t, s.HealthAddr, false, "tally_server_svids_issued_total", `type="jwt"`) // none yet
	start := time.Now()

	// The agent's cache gauge, scraped all through the flood.
	scraped := make(chan []float64, 1)
	stopScraping := make(chan struct{})
	go func() {
		var seen []float64
		for {
			seen = append(seen, jwtFloodMetric(t, a.HealthAddr, "tally_agent_jwt_cache_entries"))
			select {
			case <-stopScraping:
				scraped <- seen
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	var mu sync.Mutex
	tokens := map[string]string{} // audience → token, for the requests served
	limited := 0
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				aud := fmt.Sprintf("flood-%d-%d", c, i)
				token, err := fetch(aud)
				mu.Lock()
				switch {
				case err == nil:
					tokens[aud] = token
				case status.Code(err) == codes.ResourceExhausted:
					limited++
					if limited == 1 {
						assert.Contains(t, status.Convert(err).Message(), "rate-limited, retry later")
					}
				default:
					t.Errorf("audience %s: %v", aud, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stopScraping)
	gauges := <-scraped
	require.False(t, t.Failed(), "the flood had errors (above)")

	// Cached audiences are still served, with the same token, while fresh
	// ones are refused: the cache holds the cacheSize last minted.
	hits, refused, remint := 0, 0, 0
	for aud, want := range tokens {
		got, err := fetch(aud)
		switch {
		case err == nil && got == want:
			hits++
		case err == nil:
			remint++ // only if the limit refilled
		case status.Code(err) == codes.ResourceExhausted:
			refused++
		default:
			require.NoError(t, err, aud)
		}
	}
	_, err = fetch("fresh-after-the-flood")
	freshRefused := status.Code(err) == codes.ResourceExhausted
	if err == nil {
		remint++ // only if the limit refilled
	} else if !freshRefused {
		require.NoError(t, err)
	}

	signed := jwtFloodMetric(t, s.HealthAddr, "tally_server_svids_issued_total", `type="jwt"`) - signedBefore
	elapsed := time.Since(start)
	refill := math.Floor(perSecond * elapsed.Seconds())
	allowed := burst + refill
	t.Logf("%d requests in %s: %d served, %d ResourceExhausted; server signed %.0f JWT-SVIDs (allowed %.0f); then %d cached audiences served, %d refused",
		callers*each, elapsed.Round(time.Millisecond), len(tokens), limited, signed, allowed, hits, refused)

	require.Positive(t, limited, "requests beyond the burst are refused")
	require.Equal(t, callers*each, len(tokens)+limited)
	require.LessOrEqual(t, signed, allowed, "the server signed at most burst + rate × elapsed")
	require.Equal(t, float64(len(tokens)+remint), signed, "every signing is a served token")
	require.Greater(t, len(tokens), cacheSize, "more tokens were minted than the cache holds")

	require.NotEmpty(t, gauges)
	for _, g := range gauges {
		require.LessOrEqual(t, g, float64(cacheSize), "tally_agent_jwt_cache_entries over jwt_cache_size")
	}
	require.Equal(t, float64(cacheSize), jwtFloodMetric(t, a.HealthAddr, "tally_agent_jwt_cache_entries"))
	require.Equal(t, signed-cacheSize, jwtFloodMetric(t, a.HealthAddr, "tally_agent_jwt_cache_evictions_total"),
		"every token minted beyond the cache size evicted one")

	require.LessOrEqual(t, float64(remint), refill)
	require.GreaterOrEqual(t, float64(hits), cacheSize-refill, "the cached audiences are served beyond the limit")
	if refill == 0 {
		require.True(t, freshRefused, "a fresh audience is still refused: %v", err)
	}
	limitedTotal := jwtFloodMetric(t, a.HealthAddr, "tally_agent_jwt_mints_limited_total")
	wantLimited := limited + refused
	if freshRefused {
		wantLimited++
	}
	require.Equal(t, float64(wantLimited), limitedTotal, "tally_agent_jwt_mints_limited_total counts every refusal")
}

// jwtFloodMetric scrapes http://addr/metrics and adds up the samples of name
// whose labels contain every one of labels (e.g. `type="jwt"`). It fails
// the test if there is none.
func jwtFloodMetric(t testing.TB, addr, name string, labels ...string) float64 {
	return jwtFloodScrape(t, addr, true, name, labels...)
}

// jwtFloodScrape is jwtFloodMetric; without required, no sample counts as 0.
func jwtFloodScrape(t testing.TB, addr string, required bool, name string, labels ...string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Errorf("scrape %s: %v", addr, err)
		return math.NaN()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("scrape %s: %v", addr, err)
		return math.NaN()
	}
	sum, found := 0.0, false
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		series, value := line[:sp], line[sp+1:]
		metric, lbls, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(lbls, l)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Errorf("%s: %v", line, err)
			continue
		}
		sum, found = sum+v, true
	}
	if !found && !required {
		return 0
	}
	if !found {
		t.Errorf("no %s%v at %s/metrics", name, labels, addr)
		return math.NaN()
	}
	return sum
}
