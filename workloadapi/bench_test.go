package workloadapi_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
)

// BenchmarkFirstX509SVID50: 50 new go-spiffe clients at once, each from
// creating its client to its first X509-SVID, against a real server on a
// real socket with the real unix attestor; reports the p50.
func BenchmarkFirstX509SVID50(b *testing.B) {
	ca := newTestCA(b)
	e := startServer(b, newTestSource(ca, appEntries(b, ca)...))
	reportFirstX509SVID50(b, e.addr)
}

// reportFirstX509SVID50 runs 50 new clients at once per iteration against
// addr and reports the median of the per-iteration p50s.
func reportFirstX509SVID50(b *testing.B, addr string) {
	var p50s []time.Duration
	for b.Loop() {
		lat := make([]time.Duration, 50)
		var wg sync.WaitGroup
		for i := range lat {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				_, err := workloadapi.FetchX509Context(context.Background(), workloadapi.WithAddr(addr))
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

// staticServer answers FetchX509SVID with a precomputed response and does
// nothing else: the floor any Workload API server has on this machine with
// this client.
type staticServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.X509SVIDResponse
}

func (s staticServer) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	if err := stream.Send(s.resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// BenchmarkFirstX509SVID50Floor is BenchmarkFirstX509SVID50 against
// staticServer.
func BenchmarkFirstX509SVID50Floor(b *testing.B) {
	ca := newTestCA(b)
	svid := ca.x509SVID(b, appID, "")
	var bundle []byte
	for _, c := range ca.bundle().X509Authorities() {
		bundle = append(bundle, c.Raw...)
	}
	resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId: svid.ID.String(), X509Svid: svid.CertChain, X509SvidKey: svid.Key, Bundle: bundle,
	}}}
	dir := b.TempDir()
	lis, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	require.NoError(b, err)
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, staticServer{resp: resp})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	reportFirstX509SVID50(b, "unix://"+lis.Addr().String())
}
