package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/nodesim"
	"github.com/tallyid/tally/test/internal/spire"
)

// TestMain lets this test binary double as a workload: run inside a pod's
// cgroup with TALLY_BENCH_CLIENT set, it makes N Workload API calls and
// prints their latencies.
func TestMain(m *testing.M) {
	if addr := os.Getenv("TALLY_BENCH_CLIENT"); addr != "" {
		os.Exit(benchClient(addr))
	}
	os.Exit(m.Run())
}

// benchClient makes TALLY_BENCH_N FetchX509SVID calls on one connection
// (each call is attested) and prints "lat_us ..." on stdout.
func benchClient(addr string) int {
	n, _ := strconv.Atoi(os.Getenv("TALLY_BENCH_N"))
	ctx := context.Background()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer c.Close()
	var lat []string
	for range n {
		t0 := time.Now()
		if _, err := c.FetchX509SVID(ctx); err != nil {
			fmt.Println("error", err)
			return 1
		}
		lat = append(lat, strconv.FormatInt(time.Since(t0).Microseconds(), 10))
	}
	fmt.Println("lat_us", strings.Join(lat, " "))
	return 0
}

// BenchmarkK8sWorkloadAttestation: a node with 100 pods; a process in one
// pod's real cgroup makes 300 FetchX509SVID calls (each attested); per call
// latency and agent CPU, for Tally with the kubelet pod source, Tally with
// the apiserver pod watch, and SPIRE v1.13.3's k8s workload attestor pointed
// at the same simulated kubelet.
func BenchmarkK8sWorkloadAttestation(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	const calls = 300
	host, err := os.Hostname()
	require.NoError(b, err)
	c := k8s.Start(b)
	ns := c.Namespace(b)
	c.ServiceAccount(b, ns, "tally-agent")
	c.ServiceAccount(b, ns, "web")
	c.Node(b, host, nil)
	agentPod := c.Pod(b, ns, "tally-agent-1", "tally-agent", host, nil, "agent")
	// The node is named after this host so that SPIRE, which dials the
	// kubelet by node name, reaches the simulator and verifies its name.
	sim := nodesim.Start(b, c, host, nodesim.Options{})
	var pods []*corev1.Pod
	for i := range 100 {
		pods = append(pods, c.Pod(b, ns, fmt.Sprintf("web-%d", i), "web", host, map[string]string{"app": "web"}, "main"))
	}
	caller := pods[57]
	dir := b.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(b, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	kubeletToken := write("kubelet-token", c.Token(b, ns, "tally-agent", nil, agentPod, time.Hour))
	self, err := os.Executable()
	require.NoError(b, err)

	client := func(addr string, n int, out *bytes.Buffer) *exec.Cmd {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "TALLY_BENCH_CLIENT="+addr, "TALLY_BENCH_N="+strconv.Itoa(n))
		cmd.Stdout, cmd.Stderr = out, out
		return cmd
	}
	// run waits until the caller pod is served (the agent has synced the
	// entry), then makes the calls from inside the pod and returns the
	// median latency and the agent's CPU per call.
	run := func(addr string, agentPID int) (time.Duration, time.Duration, time.Duration) {
		var out bytes.Buffer
		require.Eventually(b, func() bool {
			out.Reset()
			return sim.RunCommand(b, caller, "main", client(addr, 1, &out)).Wait() == nil
		}, time.Minute, 500*time.Millisecond, "the caller pod is never served")
		out.Reset()
		before := harness.CPUOf(b, agentPID)
		require.NoError(b, sim.RunCommand(b, caller, "main", client(addr, calls, &out)).Wait(), out.String())
		after := harness.CPUOf(b, agentPID)
		line := out.String()
		i := strings.Index(line, "lat_us ")
		require.GreaterOrEqual(b, i, 0, line)
		var lat []time.Duration
		for _, f := range strings.Fields(strings.TrimSpace(line[i+7:])) {
			us, _ := strconv.ParseInt(f, 10, 64)
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		slices.Sort(lat)
		cpu := (after - before) / calls
		return lat[len(lat)/2], lat[len(lat)*95/100], cpu
	}

	var rows []string
	row := func(what string, p50, p95, cpu time.Duration) {
		rows = append(rows, fmt.Sprintf("%s\t%.2f\t%.2f\t%.3f", what,
			float64(p50.Microseconds())/1000, float64(p95.Microseconds())/1000, float64(cpu.Microseconds())/1000))
	}

	for _, source := range []string{"kubelet", "apiserver"} {
		s := harness.StartServer(b, "--log-level", "info", "--psat-cluster", "c1", "--psat-kubeconfig", c.Kubeconfig, "--psat-service-account", ns+":tally-agent")
		args := []string{"--node-attestor", "k8s_psat", "--psat-token-path",
			write("psat-"+source, c.Token(b, ns, "tally-agent", []string{"tally-server"}, agentPod, time.Hour)), "--pod-source", source, "--log-level", "info"}
		if source == "kubelet" {
			args = append(args, "--kubelet-url", sim.URL, "--kubelet-ca-file", sim.CAFile, "--kubelet-token-path", kubeletToken)
		} else {
			args = append(args, "--node-name", host, "--kubeconfig", c.Kubeconfig)
		}
		a := harness.NewAgent(b, s, args...)
		a.Start(b)
		_, err := s.Admin(b).BatchCreateEntries(context.Background(), &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
			{SpiffeId: "spiffe://example.org/nodes/c1", ParentId: "spiffe://example.org/tally/server",
				Selectors: []*tallyv1.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}},
			{SpiffeId: "spiffe://example.org/web", ParentId: "spiffe://example.org/nodes/c1",
				Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "ns:" + ns}, {Type: "k8s", Value: "sa:web"}}},
		}})
		require.NoError(b, err)
		p50, p95, cpu := run(a.Addr(), a.PID())
		row("Tally, pod source "+source, p50, p95, cpu)
		a.Stop(b)
		s.Stop(b)
	}

	sp := spire.Start(b, spire.Options{AgentPlugins: fmt.Sprintf(`    WorkloadAttestor "k8s" {
        plugin_data {
            node_name = %q
            kubelet_secure_port = %s
            kubelet_ca_path = %q
            token_path = %q
        }
    }`, host, sim.URL[strings.LastIndexByte(sim.URL, ':')+1:], sim.CAFile, kubeletToken)})
	sp.CreateEntries(b, []spire.Entry{{SPIFFEID: "spiffe://example.org/web", Selectors: []string{"k8s:ns:" + ns, "k8s:sa:web"}}})
	p50, p95, cpu := run("unix://"+sp.AgentSocket(), sp.AgentPID())
	row("SPIRE v1.13.3 k8s attestor (same simulated kubelet)", p50, p95, cpu)

	table(b, fmt.Sprintf("Kubernetes workload attestation: node with 100 pods, %d FetchX509SVID calls from one pod's cgroup", calls),
		"agent\tp50 (ms)\tp95 (ms)\tagent CPU per call (ms)", rows)
}
