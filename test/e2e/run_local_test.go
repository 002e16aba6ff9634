package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/test/internal/harness"
)

// TestMakeRun runs what `make run` runs: a local trust domain with the
// greeter demo; it must come up, greet over mTLS, and stop cleanly on
// Ctrl-C (SIGINT).
func TestMakeRun(t *testing.T) {
	t.Parallel()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "run-local.sh")
	env := []string{
		"TALLY_BIN=" + harness.Binaries(t),
		"TALLY_NODE_ADDR=" + harness.FreeAddr(t),
		"TALLY_HTTPS_ADDR=" + harness.FreeAddr(t),
		"TALLY_HEALTH_ADDR=" + harness.FreeAddr(t),
		"TALLY_WEB_ADDR=" + harness.FreeAddr(t),
		"TALLY_AGENT_HEALTH_ADDR=" + harness.FreeAddr(t),
		"TALLY_GREETER_ADDR=" + harness.FreeAddr(t),
	}
	run := harness.StartProcess(t, env, 0, "bash", script)
	run.WaitFor(t, "Ctrl-C stops everything.", 2*time.Minute)
	require.Regexp(t, `ok 1: hello spiffe://example.org/demo/greeter-client, this is spiffe://example.org/demo/greeter-server`, run.Output())
	require.Regexp(t, `dashboard https://127\.0\.0\.1:\d+/dashboard/login#token=[\w.-]+\n`, run.Output())
	dir := regexp.MustCompile(`state and logs in (/tmp/tally-run\.\S+)`).FindStringSubmatch(run.Output())
	require.Len(t, dir, 2)
	t.Cleanup(func() { os.RemoveAll(dir[1]) })

	run.Signal(syscall.SIGINT)
	require.NoError(t, run.Wait(t, time.Minute), run.Output())
	require.Contains(t, run.Output(), "stopped; state and logs kept in")
	_, err := os.Stat(filepath.Join(dir[1], "agent", "agent.sock"))
	require.ErrorIs(t, err, os.ErrNotExist, "the agent removed its socket on the way out")
}
