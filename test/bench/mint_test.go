package bench

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// BenchmarkServerMint measures X509-SVID and JWT-SVID issuance through the
// running server's Node API (client and server share this machine's cores,
// like SPIRE's figures) beside the raw crypto floor of the same run.
func BenchmarkServerMint(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	d := benchDuration()
	s := harness.StartServer(b, "--log-level", "info") // as deployed; the harness default is debug
	ctx := context.Background()
	agent, err := s.AttestJoinToken(b, s.NewToken(b, ""))
	require.NoError(b, err)
	created, err := s.Admin(b).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{{
		SpiffeId: "spiffe://example.org/bench", ParentId: agent.ID.String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}},
	}}})
	require.NoError(b, err)
	entryID := created.GetEntries()[0].GetId()
	csr := harness.CSR(b, harness.NewKey(b), []string{"spiffe://example.org/bench"}, nil)

	mint := func(perCall int) func() (int, error) {
		reqs := make([]*tallyv1.X509SVIDRequest, perCall)
		for i := range reqs {
			reqs[i] = &tallyv1.X509SVIDRequest{EntryId: entryID, Csr: csr}
		}
		return func() (int, error) {
			resp, err := agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: reqs})
			if err != nil {
				return 0, err
			}
			for _, r := range resp.GetResults() {
				if r.GetError() != "" {
					return 0, fmt.Errorf("%s", r.GetError())
				}
			}
			return perCall, nil
		}
	}
	jwt := func() (int, error) {
		_, err := agent.Node.NewJWTSVID(ctx, &tallyv1.NewJWTSVIDRequest{EntryId: entryID, Audience: []string{"bench"}})
		return 1, err
	}

	floor := newX509Floor(b)
	cores := runtime.GOMAXPROCS(0)
	x1 := rate(b, d, 1, floor.mint)
	xN := rate(b, d, cores, floor.mint)
	j1 := rate(b, d, 1, jwtFloor(b))
	jN := rate(b, d, cores, jwtFloor(b))

	var rows []string
	row := func(what, metric string, workers int, got, base float64) {
		rows = append(rows, fmt.Sprintf("%s\t%d\t%.0f\t%.0f\t%.2f", what, workers, got, base, got/base))
		b.ReportMetric(got/base, metric+"_vs_floor")
	}
	row("x509 BatchNewX509SVID, 1 CSR/call", "x509_c1", 1, rate(b, d, 1, mint(1)), x1)
	row("x509 BatchNewX509SVID, 1 CSR/call", "x509_c64", 64, rate(b, d, 64, mint(1)), xN)
	row("x509 BatchNewX509SVID, 50 CSRs/call", "x509_batch50_c2", 2, rate(b, d, 2, mint(50)), xN)
	row("jwt NewJWTSVID", "jwt_c1", 1, rate(b, d, 1, jwt), j1)
	row("jwt NewJWTSVID", "jwt_c64", 64, rate(b, d, 64, jwt), jN)
	table(b, fmt.Sprintf("Issuance through the server's Node API (gRPC+TLS, client on the same %d cores) vs raw crypto floor", cores),
		"path\tcallers\tTally/s\tfloor/s\tratio", rows)
}

func benchDuration() time.Duration {
	return 3 * time.Second
}
