package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/spire"
)

// idleWindow is how long BenchmarkServerIdleCPU watches each server:
// $TALLY_IDLE_WINDOW (a Go duration), 60 s by default.
func idleWindow(t testing.TB) time.Duration {
	v := os.Getenv("TALLY_IDLE_WINDOW")
	if v == "" {
		return time.Minute
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "TALLY_IDLE_WINDOW")
	return d
}

// idleCPU is the CPU process pid uses in one idle window, per minute, and
// the machine's load average at the end.
func idleCPU(t testing.TB, pid int) string {
	window := idleWindow(t)
	time.Sleep(5 * time.Second) // past start-up and the last attestation
	cpu0 := harness.CPUOf(t, pid)
	time.Sleep(window)
	cpu := harness.CPUOf(t, pid) - cpu0
	load, err := os.ReadFile("/proc/loadavg")
	require.NoError(t, err)
	return fmt.Sprintf("%.0f ms/min\tload %s", float64(cpu.Milliseconds())/window.Minutes(),
		strings.Join(strings.Fields(string(load))[:3], " "))
}

// BenchmarkServerIdleCPU reports the CPU an idle tally-server uses per
// minute with no agent and with 100 agents connected (each attested with a
// join token and holding a SyncEntries stream, as a tally-agent does), and
// SPIRE's server with the one agent of its test deployment (100 SPIRE
// agents would be 100 spire-agent processes). Another build of the server
// is measured with TALLY_BIN set to its directory.
func BenchmarkServerIdleCPU(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	var rows []string
	add := func(what, result string) { rows = append(rows, what+"\t"+result) }

	measure := func(name string, s *harness.Server) {
		s.Start(b)
		add(name+", 0 agents", idleCPU(b, s.PID()))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for range 100 {
			a, err := s.AttestJoinToken(b, s.NewToken(b, ""))
			require.NoError(b, err)
			stream, err := a.Node.SyncEntries(ctx, &tallyv1.SyncEntriesRequest{})
			require.NoError(b, err)
			_, err = stream.Recv()
			require.NoError(b, err, "the snapshot")
		}
		add(name+", 100 agents", idleCPU(b, s.PID()))
		s.Stop(b)
	}

	measure("Tally", harness.NewServer(b, "--log-level", "info")) // as deployed; the harness default is debug

	d := spire.Start(b, spire.Options{})
	add("SPIRE server, its 1 agent", idleCPU(b, d.ServerPID()))

	table(b, "Idle server CPU (schedstat of the server process)", "server\tCPU\tload average (1, 5, 15 min)", rows)
}
