package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// TestRotationWithoutOutage: with 10 s SVIDs (and a 1 min CA, so the CA
// keys rotate too) an open stream receives each renewed SVID before the old
// one expires, and two workloads talking mTLS every 200 ms see no failed
// handshake for a minute (300 calls, through the CA activating its next key
// at 5/6 of 1 min). How often SVIDs renew is not asserted here: that is
// timing, for a benchmark.
func TestRotationWithoutOutage(t *testing.T) {
	s := harness.StartServer(t, "--ca-ttl", "1m", "--x509-svid-ttl", "10s")
	a := harness.StartAgent(t, s, "")
	greeter := harness.Binaries(t) + "/greeter"
	self, err := os.Executable()
	require.NoError(t, err)
	createEntries(t, s,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/greeter/server", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}, {Type: "unix", Value: "path:" + greeter}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/greeter/client", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:65534"}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/watcher", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}, {Type: "unix", Value: "path:" + self}}},
	)
	addr := harness.FreeAddr(t)
	server := harness.StartProcess(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + a.Addr()}, 0,
		greeter, "server", "--addr", addr, "--peer-id", "spiffe://example.org/greeter/client")
	server.WaitFor(t, "listening on", 30*time.Second)
	client := harness.StartProcess(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + a.Addr()}, 65534,
		greeter, "client", "--addr", addr, "--peer-id", "spiffe://example.org/greeter/server", "--count", "300", "--every", "200ms")

	// Watch this process's own SVID on one open stream.
	type seen struct {
		serial    string
		notAfter  time.Time
		received  time.Time
		authority string
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var updates []seen
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Client(t).WatchX509Context(ctx, watcher{func(c *workloadapi.X509Context) {
			leaf := c.DefaultSVID().Certificates[0]
			if len(updates) == 0 || updates[len(updates)-1].serial != leaf.SerialNumber.String() {
				updates = append(updates, seen{leaf.SerialNumber.String(), leaf.NotAfter, time.Now(), string(leaf.AuthorityKeyId)})
			}
		}})
	}()

	require.NoError(t, client.Wait(t, 4*time.Minute), client.Output())
	cancel()
	<-done
	require.Equal(t, 300, strings.Count(client.Output(), "ok "), "every call succeeded")
	require.NotContains(t, client.Output(), "FAILED")

	require.GreaterOrEqual(t, len(updates), 2, "the 10 s SVID was renewed during the minute of calls")
	authorities := map[string]bool{}
	for i, u := range updates {
		authorities[u.authority] = true
		if i > 0 {
			require.True(t, u.received.Before(updates[i-1].notAfter),
				"renewal %d arrived %s, after the previous SVID expired at %s", i, u.received, updates[i-1].notAfter)
		}
	}
	require.GreaterOrEqual(t, len(authorities), 2, "the CA key rotated during the test, without an outage")
}
