package workloadapi_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
)

// BenchmarkFirstX509SVID50: 50 new go-spiffe clients at once, each from
// creating its client to its first X509-SVID, against a real server on a
// real socket with the real unix attestor; reports the p50.
func BenchmarkFirstX509SVID50(b *testing.B) {
	ca := newTestCA(b)
	e := startServer(b, newTestSource(ca, appEntries(b, ca)...))
	var p50s []time.Duration
	for b.Loop() {
		lat := make([]time.Duration, 50)
		var wg sync.WaitGroup
		for i := range lat {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				_, err := workloadapi.FetchX509Context(context.Background(), workloadapi.WithAddr(e.addr))
				require.NoError(b, err)
				lat[i] = time.Since(start)
			}()
		}
		wg.Wait()
		slices.Sort(lat)
		p50s = append(p50s, lat[25])
	}
	slices.Sort(p50s)
	b.ReportMetric(float64(p50s[len(p50s)/2].Microseconds())/1000, "p50-ms")
}
