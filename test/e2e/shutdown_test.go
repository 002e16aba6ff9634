package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// TestShutdownEndsAgentStreams: agents' SyncEntries streams never end by
// themselves, so a graceful stop that waits for them waited out its whole
// grace period (5 s) whenever agents were connected. On SIGTERM the server
// ends them itself, with Unavailable (agents reconnect), and stops without
// running out the grace period. The exit time is measured in
// BenchmarkServerShutdown.
func TestShutdownEndsAgentStreams(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	const agents = 100
	streams := make([]tallyv1.Node_SyncEntriesClient, agents)
	for i := range streams {
		a, err := s.AttestJoinToken(t, s.NewToken(t, ""))
		require.NoError(t, err)
		stream, err := a.Node.SyncEntries(context.Background(), &tallyv1.SyncEntriesRequest{})
		require.NoError(t, err)
		_, err = stream.Recv()
		require.NoError(t, err, "the snapshot")
		streams[i] = stream
	}

	start := time.Now()
	s.Stop(t)
	t.Logf("server exited %s after SIGTERM with %d agent streams open", time.Since(start), agents)
	require.NotContains(t, s.Log(), "graceful stop timed out", "no stream held the stop up")

	var wg sync.WaitGroup
	errs := make([]error, agents)
	for i, stream := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for errs[i] == nil { // past any message sent before the stop
				_, errs[i] = stream.Recv()
			}
		}()
	}
	wg.Wait()
	ended := 0
	for _, err := range errs {
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		if status.Convert(err).Message() == "server shutting down; reconnect" {
			ended++
		}
	}
	require.Positive(t, ended, "the server ended the streams itself")
}
