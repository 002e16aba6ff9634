package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

func TestAgentMetricsAndTallyctlSVID(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/ctl", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fetchOnceSynced(t, ctx, a.Addr())

	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, harness.Binaries(t)+"/tallyctl", append([]string{"svid"}, args...)...)
		cmd.Env = append(cmd.Environ(), "SPIFFE_ENDPOINT_SOCKET="+a.Addr())
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
		return string(out)
	}
	require.Contains(t, ctl("fetch", "x509"), "spiffe://example.org/ctl")
	out := ctl("fetch", "jwt", "--audience", "orders", "-o", "json")
	var fetched struct {
		SVIDs []struct {
			Token string `json:"token"`
		} `json:"svids"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &fetched), out)
	require.Len(t, fetched.SVIDs, 1)
	token := fetched.SVIDs[0].Token
	require.Contains(t, ctl("validate", "--audience", "orders", "--svid", token), "SVID is valid.")
	watch := harness.StartProcess(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + a.Addr()}, 0, harness.Binaries(t)+"/tallyctl", "svid", "watch")
	watch.WaitFor(t, "spiffe://example.org/ctl", 30*time.Second)

	resp, err := http.Get("http://" + a.HealthAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"tally_agent_workload_connections",
		`tally_agent_svids_served_total{type="x509"}`,
		`tally_agent_svids_served_total{type="jwt"}`,
		"tally_agent_svid_rotations_total",
		"tally_agent_time_to_first_svid_seconds_count",
		"tally_agent_sync_lag_seconds_count",
		`tally_agent_svids_minted_total{result="ok",type="x509"}`,
		`tally_agent_attestations_total{result="ok"}`,
	} {
		require.Contains(t, string(body), want)
	}
	for _, path := range []string{"/livez", "/readyz"} {
		resp, err := http.Get("http://" + a.HealthAddr + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.NotContains(t, a.Log(), token, "tokens never reach the agent log")
	require.False(t, strings.Contains(a.Log(), "PRIVATE KEY"))
}
