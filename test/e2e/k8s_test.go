package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/nodesim"
)

// k8sEnv is a real kube-apiserver with one node, an agent pod bound to it,
// and a Tally server that accepts k8s_psat for the agent's service account.
type k8sEnv struct {
	cluster  *k8s.Cluster
	ns       string
	node     *corev1.Node
	agentPod *corev1.Pod
	server   *harness.Server
	dir      string
}

// startK8sEnv sets the env up in the package's shared cluster: a namespace
// of its own, and a node named after it.
func startK8sEnv(t *testing.T) *k8sEnv {
	t.Helper()
	c := cluster.Get(t)
	e := &k8sEnv{cluster: c, ns: c.Namespace(t), dir: t.TempDir()}
	c.ServiceAccount(t, e.ns, "tally-agent")
	e.node = c.Node(t, e.ns+"-node-a", map[string]string{"zone": "a", "ignored": "x"})
	e.agentPod = c.Pod(t, e.ns, "tally-agent-1", "tally-agent", e.node.Name, nil, "agent")
	e.server = harness.StartServer(t, "--psat-cluster", "c1", "--psat-kubeconfig", c.Kubeconfig,
		"--psat-service-account", e.ns+":tally-agent", "--psat-node-label-key", "zone")
	return e
}

// file writes a token into a file of the env and returns its path.
func (e *k8sEnv) file(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// agentToken is the projected token a kubelet mounts into the agent pod.
func (e *k8sEnv) agentToken(t *testing.T) string {
	return e.cluster.Token(t, e.ns, "tally-agent", []string{"tally-server"}, e.agentPod, time.Hour)
}

func TestK8sPSATAgentAttestation(t *testing.T) {
	e := startK8sEnv(t)
	a := harness.NewAgent(t, e.server, "--node-attestor", "k8s_psat", "--psat-token-path", e.file(t, "psat", e.agentToken(t)))
	a.Start(t)
	require.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/c1/"+string(e.node.UID), a.ID(t).String())

	got, err := e.server.Admin(t).GetAgent(context.Background(), &tallyv1.GetAgentRequest{SpiffeId: a.ID(t).String()})
	require.NoError(t, err)
	var sels []string
	for _, s := range got.GetSelectors() {
		sels = append(sels, s.GetType()+":"+s.GetValue())
	}
	require.ElementsMatch(t, []string{
		"k8s_psat:cluster:c1",
		"k8s_psat:agent_ns:" + e.ns,
		"k8s_psat:agent_sa:tally-agent",
		"k8s_psat:agent_pod_name:tally-agent-1",
		"k8s_psat:agent_pod_uid:" + string(e.agentPod.UID),
		"k8s_psat:agent_node_name:" + e.node.Name,
		"k8s_psat:agent_node_uid:" + string(e.node.UID),
		"k8s_psat:agent_node_label:zone:a", // "ignored" is not allow-listed
	}, sels)
	require.NotContains(t, a.Log(), "eyJ", "no token in the agent log")
	require.NotContains(t, e.server.Log(), "eyJ", "no token in the server log")
}

func TestK8sPSATRefusals(t *testing.T) {
	e := startK8sEnv(t)
	c := e.cluster
	c.ServiceAccount(t, e.ns, "other")
	otherPod := c.Pod(t, e.ns, "other-1", "other", e.node.Name, nil, "x")

	// A pod deleted after its token was issued, and one deleted and created
	// again under the same name (new UID). Neither token was reviewed before
	// (the apiserver caches successful reviews for 10 s).
	gone := c.Pod(t, e.ns, "gone-1", "tally-agent", e.node.Name, nil, "agent")
	goneToken := c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, gone, time.Hour)
	c.DeletePod(t, gone)
	again := c.Pod(t, e.ns, "again-1", "tally-agent", e.node.Name, nil, "agent")
	againToken := c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, again, time.Hour)
	c.DeletePod(t, again)
	c.Pod(t, e.ns, "again-1", "tally-agent", e.node.Name, nil, "agent")

	other := k8s.Start(t) // another cluster, another signing key
	otherNS := other.Namespace(t)
	other.ServiceAccount(t, otherNS, "tally-agent")
	other.Node(t, "node-a", nil)
	foreignPod := other.Pod(t, otherNS, "tally-agent-1", "tally-agent", "node-a", nil, "agent")

	cases := []struct {
		name, token, why string
	}{
		{"wrong audience", c.Token(t, e.ns, "tally-agent", []string{"someone-else"}, e.agentPod, time.Hour), "not authenticated"},
		{"expired token", forgeExpiredToken(t, c, e), "not authenticated"},
		{"deleted pod", goneToken, ""},
		{"recreated pod", againToken, ""},
		{"service account not allow-listed", c.Token(t, e.ns, "other", []string{"tally-server"}, otherPod, time.Hour), "not allowed"},
		{"token of another cluster", other.Token(t, otherNS, "tally-agent", []string{"tally-server"}, foreignPod, time.Hour), "not authenticated"},
		{"garbage", "not-a-jwt", "not authenticated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.server.Attest(t, "k8s_psat", []byte(tc.token))
			require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
			require.Contains(t, status.Convert(err).Message(), tc.why)
			require.NotContains(t, status.Convert(err).Message(), tc.token)
		})
	}
	agents, err := e.server.Admin(t).ListAgents(context.Background(), &tallyv1.ListAgentsRequest{})
	require.NoError(t, err)
	require.Empty(t, agents.GetAgents(), "nothing attested")

	// The agent process with a refused token logs why and retries with backoff.
	a := harness.NewAgent(t, e.server, "--node-attestor", "k8s_psat", "--psat-token-path",
		e.file(t, "bad", c.Token(t, e.ns, "other", []string{"tally-server"}, otherPod, time.Hour)))
	a.StartNoWait(t)
	require.Eventually(t, func() bool { return strings.Count(a.Log(), `"msg":"attestation failed"`) >= 2 }, time.Minute, 100*time.Millisecond)
	require.Contains(t, a.Log(), "not allowed")
	require.Contains(t, a.Log(), `"retry_in"`)
}

// forgeExpiredToken signs, with the cluster's real service-account key, a
// token like the agent's but expired an hour ago.
func forgeExpiredToken(t *testing.T, c *k8s.Cluster, e *k8sEnv) string {
	t.Helper()
	sa, err := c.Client.CoreV1().ServiceAccounts(e.ns).Get(context.Background(), "tally-agent", metav1GetOptions())
	require.NoError(t, err)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: c.SAKey}, nil)
	require.NoError(t, err)
	jti := make([]byte, 8)
	_, _ = rand.Read(jti)
	now := time.Now()
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: c.SAIssuer, Subject: "system:serviceaccount:" + e.ns + ":tally-agent", Audience: jwt.Audience{"tally-server"},
		IssuedAt: jwt.NewNumericDate(now.Add(-2 * time.Hour)), NotBefore: jwt.NewNumericDate(now.Add(-2 * time.Hour)),
		Expiry: jwt.NewNumericDate(now.Add(-time.Hour)), ID: string(rune('a' + jti[0]%26)),
	}).Claims(map[string]any{"kubernetes.io": map[string]any{
		"namespace":      e.ns,
		"serviceaccount": map[string]any{"name": "tally-agent", "uid": string(sa.UID)},
		"pod":            map[string]any{"name": e.agentPod.Name, "uid": string(e.agentPod.UID)},
		"node":           map[string]any{"name": e.node.Name, "uid": string(e.node.UID)},
	}}).Serialize()
	require.NoError(t, err)
	return token
}

// TestK8sWorkloadAttestation: processes in real cgroups of real pods fetch
// X509-SVIDs; each gets exactly the identities its pod's selectors match,
// through a node alias that covers every agent of the cluster.
func TestK8sWorkloadAttestation(t *testing.T) {
	for _, source := range []string{"kubelet", "apiserver"} {
		t.Run(source, func(t *testing.T) {
			e := startK8sEnv(t)
			c := e.cluster
			sim := nodesim.Start(t, c, e.node.Name, nodesim.Options{})
			c.ServiceAccount(t, e.ns, "web")
			c.ServiceAccount(t, e.ns, "db")
			web := c.Pod(t, e.ns, "web-1", "web", e.node.Name, map[string]string{"app": "web"}, "main")
			db := c.Pod(t, e.ns, "db-1", "db", e.node.Name, map[string]string{"app": "db"}, "main")
			c.ServiceAccount(t, e.ns, "batch")
			batch := c.Pod(t, e.ns, "batch-1", "batch", e.node.Name, map[string]string{"app": "batch"}, "main")

			args := []string{"--node-attestor", "k8s_psat", "--psat-token-path", e.file(t, "psat", e.agentToken(t)), "--pod-source", source}
			if source == "kubelet" {
				args = append(args, "--kubelet-url", sim.URL, "--kubelet-ca-file", sim.CAFile,
					"--kubelet-token-path", e.file(t, "kubelet-token", c.Token(t, e.ns, "tally-agent", nil, e.agentPod, time.Hour)))
			} else {
				args = append(args, "--node-name", e.node.Name, "--kubeconfig", c.Kubeconfig)
			}
			a := harness.NewAgent(t, e.server, args...)
			a.Start(t)

			// One node alias for every agent of cluster c1; workload entries
			// are parented to it.
			alias := "spiffe://example.org/nodes/c1"
			createEntries(t, e.server,
				&tallyv1.Entry{SpiffeId: alias, ParentId: "spiffe://example.org/tally/server",
					Selectors: []*tallyv1.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}},
				&tallyv1.Entry{SpiffeId: "spiffe://example.org/ns/" + e.ns + "/sa/web", ParentId: alias,
					Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "ns:" + e.ns}, {Type: "k8s", Value: "sa:web"}}},
				&tallyv1.Entry{SpiffeId: "spiffe://example.org/db", ParentId: alias,
					Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "pod-label:app:db"}, {Type: "k8s", Value: "container-name:main"}}},
				&tallyv1.Entry{SpiffeId: "spiffe://example.org/node-a-only", ParentId: alias,
					Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "node-name:node-b"}}},
			)
			fetch := func(pod *corev1.Pod) (string, error) {
				var out bytes.Buffer
				cmd := exec.Command(harness.Binaries(t)+"/tallyctl", "svid", "fetch", "x509", "-o", "json", "--socket-path", a.Socket)
				cmd.Stdout, cmd.Stderr = &out, &out
				if pod == nil {
					err := cmd.Run()
					return out.String(), err
				}
				ctr := sim.RunCommand(t, pod, "main", cmd)
				err := ctr.Wait()
				return out.String(), err
			}
			ids := func(out string) []string {
				var doc struct {
					SVIDs []struct {
						SPIFFEID string `json:"spiffe_id"`
					} `json:"svids"`
				}
				require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
				var r []string
				for _, s := range doc.SVIDs {
					r = append(r, s.SPIFFEID)
				}
				return r
			}
			out, err := fetch(web)
			require.NoError(t, err, out)
			require.Equal(t, []string{"spiffe://example.org/ns/" + e.ns + "/sa/web"}, ids(out))
			out, err = fetch(db)
			require.NoError(t, err, out)
			require.Equal(t, []string{"spiffe://example.org/db"}, ids(out))
			out, err = fetch(batch) // a pod no entry selects
			require.Error(t, err)
			require.Contains(t, out, "PermissionDenied")
			out, err = fetch(nil) // a process in no pod
			require.Error(t, err)
			require.Contains(t, out, "PermissionDenied")
		})
	}
}

func TestK8sKubeletRefusals(t *testing.T) {
	e := startK8sEnv(t)
	c := e.cluster
	shared := strings.Repeat("ab", 32)
	sim := nodesim.Start(t, c, e.node.Name, nodesim.Options{ContainerID: func(pod *corev1.Pod, _ string) string {
		if strings.HasPrefix(pod.Name, "twin-") {
			return shared // two pods claim one container ID
		}
		return ""
	}})
	c.ServiceAccount(t, e.ns, "web")
	web := c.Pod(t, e.ns, "web-1", "web", e.node.Name, nil, "main")
	twin := c.Pod(t, e.ns, "twin-1", "web", e.node.Name, nil, "main")
	c.Pod(t, e.ns, "twin-2", "web", e.node.Name, nil, "main")
	kubeletToken := e.file(t, "kubelet-token", c.Token(t, e.ns, "tally-agent", nil, e.agentPod, time.Hour))

	run := func(a *harness.AgentProc, pod *corev1.Pod) (string, error) {
		var out bytes.Buffer
		cmd := exec.Command(harness.Binaries(t)+"/tallyctl", "svid", "fetch", "x509", "--socket-path", a.Socket)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := sim.RunCommand(t, pod, "main", cmd).Wait()
		return out.String(), err
	}
	createEntries(t, e.server,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/nodes/c1", ParentId: "spiffe://example.org/tally/server",
			Selectors: []*tallyv1.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: "spiffe://example.org/nodes/c1",
			Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "sa:web"}}})

	t.Run("kubelet serving certificate not trusted", func(t *testing.T) {
		a := harness.NewAgent(t, e.server, "--node-attestor", "k8s_psat", "--psat-token-path", e.file(t, "psat1", e.agentToken(t)),
			"--pod-source", "kubelet", "--kubelet-url", sim.URL, "--kubelet-ca-file", c.CAFile, "--kubelet-token-path", kubeletToken)
		a.Start(t)
		out, err := run(a, web)
		require.Error(t, err, out)
		require.NotContains(t, out, "spiffe://example.org/web")
		require.Contains(t, a.Log(), "not trusted")
	})
	t.Run("two pods claiming one container ID", func(t *testing.T) {
		a := harness.NewAgent(t, e.server, "--node-attestor", "k8s_psat", "--psat-token-path", e.file(t, "psat2", e.agentToken(t)),
			"--pod-source", "kubelet", "--kubelet-url", sim.URL, "--kubelet-ca-file", sim.CAFile, "--kubelet-token-path", kubeletToken)
		a.Start(t)
		out, err := run(a, twin)
		require.Error(t, err, out)
		require.Contains(t, out, "FailedPrecondition")
		out, err = run(a, web)
		require.NoError(t, err, out)
		require.Contains(t, out, "spiffe://example.org/web")
	})
}

func metav1GetOptions() metav1.GetOptions { return metav1.GetOptions{} }

// TestK8sPSATReattestsWithAFreshToken: an agent whose SVID expired (the
// node was down longer than its life) attests again with the fresh token
// the kubelet rotated into its file, and keeps its node identity. That the
// agent attests again when its stored SVID expired is agent's
// TestSessionReattestsWithAnExpiredStoredSVID, on a fake clock; here the
// server takes the second attestation of the same node.
func TestK8sPSATReattestsWithAFreshToken(t *testing.T) {
	e := startK8sEnv(t)
	first, err := e.server.Attest(t, "k8s_psat", []byte(e.agentToken(t)))
	require.NoError(t, err)
	again, err := e.server.Attest(t, "k8s_psat", []byte(e.agentToken(t))) // the kubelet rotated the token
	require.NoError(t, err)
	require.Equal(t, first.ID, again.ID, "same node, same agent ID")
	require.Equal(t, 2, strings.Count(e.server.Log(), `"action":"attest_agent","target":"k8s_psat","result":"ok"`))
}

// TestK8sContainerNotYetListed: a container whose process runs before the
// kubelet lists it (the simulator reports it only after 1 s) is attested
// once it appears.
func TestK8sContainerNotYetListed(t *testing.T) {
	e := startK8sEnv(t)
	c := e.cluster
	sim := nodesim.Start(t, c, e.node.Name, nodesim.Options{StartDelay: time.Second})
	c.ServiceAccount(t, e.ns, "web")
	a := harness.NewAgent(t, e.server, "--node-attestor", "k8s_psat", "--psat-token-path", e.file(t, "psat", e.agentToken(t)),
		"--pod-source", "kubelet", "--kubelet-url", sim.URL, "--kubelet-ca-file", sim.CAFile,
		"--kubelet-token-path", e.file(t, "kubelet-token", c.Token(t, e.ns, "tally-agent", nil, e.agentPod, time.Hour)))
	a.Start(t)
	createEntries(t, e.server,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/nodes/c1", ParentId: "spiffe://example.org/tally/server",
			Selectors: []*tallyv1.Selector{{Type: "k8s_psat", Value: "cluster:c1"}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: "spiffe://example.org/nodes/c1",
			Selectors: []*tallyv1.Selector{{Type: "k8s", Value: "sa:web"}}})
	web := c.Pod(t, e.ns, "web-1", "web", e.node.Name, nil, "main")
	var out bytes.Buffer
	cmd := exec.Command(harness.Binaries(t)+"/tallyctl", "svid", "fetch", "x509", "--socket-path", a.Socket)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, sim.RunCommand(t, web, "main", cmd).Wait(), out.String())
	require.Contains(t, out.String(), "spiffe://example.org/web")
}
