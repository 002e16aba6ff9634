package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// BenchmarkRotationRenewals: how often an open Workload API stream receives
// a renewed X509-SVID, and how long before the previous one would have
// expired, with 10 s SVIDs under a 1 min CA for 90 s (the e2e test
// TestRotationWithoutOutage checks only that every renewal arrives in time).
func BenchmarkRotationRenewals(b *testing.B) {
	const svidTTL, window = 10 * time.Second, 90 * time.Second
	s := harness.StartServer(b, "--ca-ttl", "1m", "--x509-svid-ttl", svidTTL.String())
	a := harness.StartAgent(b, s, "")
	_, err := s.Admin(b).BatchCreateEntries(context.Background(), &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{{
		SpiffeId: "spiffe://example.org/rotating", ParentId: a.ID(b).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", os.Getuid())}},
	}}})
	require.NoError(b, err)

	type seen struct {
		serial       string
		notAfter, at time.Time
	}
	var updates []seen
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	_ = a.Client(b).WatchX509Context(ctx, x509Watcher(func(c *workloadapi.X509Context) {
		leaf := c.DefaultSVID().Certificates[0]
		if len(updates) == 0 || updates[len(updates)-1].serial != leaf.SerialNumber.String() {
			updates = append(updates, seen{leaf.SerialNumber.String(), leaf.NotAfter, time.Now()})
		}
	}))
	require.GreaterOrEqual(b, len(updates), 2)
	minMargin := time.Duration(1<<63 - 1)
	for i := 1; i < len(updates); i++ {
		minMargin = min(minMargin, updates[i-1].notAfter.Sub(updates[i].at))
	}
	renewals := len(updates) - 1
	table(b, "X509-SVID renewals on an open stream (10 s SVIDs, 1 min CA, 90 s)", "renewals\tper minute\tleast time left on the old SVID", []string{
		fmt.Sprintf("%d\t%.1f\t%s", renewals, float64(renewals)/window.Minutes(), minMargin.Round(10*time.Millisecond)),
	})
	b.ReportMetric(float64(renewals)/window.Minutes(), "renewals/min")
	b.ReportMetric(minMargin.Seconds(), "min_margin_s")
}

type x509Watcher func(*workloadapi.X509Context)

func (w x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w(c) }
func (x509Watcher) OnX509ContextWatchError(error)                    {}
