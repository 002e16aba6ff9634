package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// BenchmarkServerShutdown: time from SIGTERM to exit with no agent and with
// 100 agents holding SyncEntries streams, in the same run (a rolling restart
// pays it once per replica).
func BenchmarkServerShutdown(b *testing.B) {
	exit := func(agents int) time.Duration {
		s := harness.StartServer(b)
		for range agents {
			a, err := s.AttestJoinToken(b, s.NewToken(b, ""))
			require.NoError(b, err)
			stream, err := a.Node.SyncEntries(context.Background(), &tallyv1.SyncEntriesRequest{})
			require.NoError(b, err)
			_, err = stream.Recv()
			require.NoError(b, err)
		}
		start := time.Now()
		s.Stop(b)
		return time.Since(start)
	}
	idle := exit(0)
	busy := exit(100)
	table(b, "Server shutdown: SIGTERM to exit", "agents\texit\tvs no agent", []string{
		fmt.Sprintf("0\t%s\t1.00", idle.Round(time.Millisecond)),
		fmt.Sprintf("100\t%s\t%.2f", busy.Round(time.Millisecond), busy.Seconds()/idle.Seconds()),
	})
	b.ReportMetric(busy.Seconds(), "exit_s_100_agents")
}
