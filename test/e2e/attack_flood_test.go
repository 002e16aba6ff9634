package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// TestAttackUnauthenticatedMemoryFlood is issue 8's third weakness:
// AttestAgent needs no client certificate, and the Node API accepted 64 MiB
// messages, so four 32 MiB calls took the server from 43 to 413 MiB and eight
// 60 MiB calls to a 934 MiB peak. The same flood, kept up while a legitimate
// agent attests, must leave the server's peak RSS within a small bound, get
// ResourceExhausted, and not stop the agent.
func TestAttackUnauthenticatedMemoryFlood(t *testing.T) {
	s := harness.StartServer(t)
	bundle := s.Bundle(t)
	before := harness.RSSOf(t, s.PID())

	// Clients as an attacker makes them: TLS that checks the server (any
	// client would), no client certificate, room for huge messages.
	dial := func() tallyv1.NodeClient {
		cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.ServerID()))
		cc, err := grpc.NewClient(s.BindAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(128<<20)))
		require.NoError(t, err)
		t.Cleanup(func() { cc.Close() })
		return tallyv1.NewNodeClient(cc)
	}
	csr := harness.CSR(t, harness.NewKey(t), nil, nil)
	payload := make([]byte, 60<<20) // shared, read-only: the flood's cost is the server's, not this test's
	flood := func(ctx context.Context, size int) (calls int, codesSeen map[codes.Code]int) {
		node := dial()
		payload := payload[:size]
		codesSeen = map[codes.Code]int{}
		for ctx.Err() == nil {
			_, err := node.AttestAgent(ctx, &tallyv1.AttestAgentRequest{AttestationType: "k8s_psat", AttestationData: payload, Csr: csr})
			if ctx.Err() != nil {
				break
			}
			calls++
			codesSeen[status.Code(err)]++
		}
		return calls, codesSeen
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		calls int
		codes map[codes.Code]int
	}
	results := make(chan result, 12)
	var wg sync.WaitGroup
	for _, size := range []int{32 << 20, 32 << 20, 32 << 20, 32 << 20, 60 << 20, 60 << 20, 60 << 20, 60 << 20, 60 << 20, 60 << 20, 60 << 20, 60 << 20} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, seen := flood(ctx, size)
			results <- result{c, seen}
		}()
	}

	// Meanwhile, legitimate agents attest and get their SVIDs.
	for range 5 {
		agent, err := s.AttestJoinToken(t, s.NewToken(t, ""))
		require.NoError(t, err, "a legitimate agent attests during the flood")
		_, err = agent.Node.RenewAgent(context.Background(), &tallyv1.RenewAgentRequest{Csr: harness.CSR(t, harness.NewKey(t), nil, nil)})
		require.NoError(t, err, "and is served as an authenticated agent")
	}
	cancel()
	wg.Wait()
	close(results)
	total := 0
	for r := range results {
		total += r.calls
		for code, n := range r.codes {
			assert.Equal(t, codes.ResourceExhausted, code, "%d calls ended %s", n, code)
		}
	}
	require.Positive(t, total, "the flood reached the server")

	peak := harness.PeakRSSOf(t, s.PID())
	t.Logf("server RSS before %d MiB, peak during %d flood calls %d MiB", before>>20, total, peak>>20)
	require.Less(t, peak-before, int64(64<<20), "the flood may cost the server at most a few buffers per connection")
}
