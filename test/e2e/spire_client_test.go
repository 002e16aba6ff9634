package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/spire"
)

// TestSPIREClientAgainstTally runs SPIRE v1.13.3's own CLI (spire-agent api
// ...) against Tally's Workload API socket, unchanged.
func TestSPIREClientAgainstTally(t *testing.T) {
	t.Parallel()
	cli := spire.Binaries(t) + "/spire-agent"
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/spire-cli", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, cli, append(args, "-socketPath", a.Socket)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return string(out)
	}

	out := run("api", "fetch", "x509")
	require.Contains(t, out, "Received 1 svid")
	require.Regexp(t, `SPIFFE ID:\s+spiffe://example.org/spire-cli`, out)
	require.Regexp(t, `Intermediates:|CA #1 Valid After:`, out)

	out = run("api", "fetch", "jwt", "-audience", "orders")
	require.Contains(t, out, "spiffe://example.org/spire-cli")
	token := regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`).FindString(out)
	require.NotEmpty(t, token, out)

	out = run("api", "validate", "jwt", "-audience", "orders", "-svid", token)
	require.Contains(t, out, "SVID is valid.")
	require.Contains(t, out, "spiffe://example.org/spire-cli")

	// api watch prints each update until stopped.
	watch := harness.StartProcess(t, nil, 0, cli, "api", "watch", "-socketPath", a.Socket)
	watch.WaitFor(t, "spiffe://example.org/spire-cli", 30*time.Second)
	require.True(t, strings.Contains(watch.Output(), "Received 1 svid"), watch.Output())
}
