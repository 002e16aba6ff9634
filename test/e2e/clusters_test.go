package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/tallyid/tally/test/internal/deploy"
	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/k8s"
)

// TestClustersShareAServer: one tally-server for two real clusters (two
// kube-apiservers with their own service-account issuers). Each cluster's
// agent attests with k8s_psat, its token reviewed by its own cluster; each
// cluster's registrar keeps its own entries, marked with its name, parented
// to its own agents; deleting a pod in one cluster leaves the other's
// entries alone.
func TestClustersShareAServer(t *testing.T) {
	t.Parallel()
	prod := cluster.Get(t)
	staging := k8s.StartWith(t, k8s.Options{SAIssuer: "https://staging.example.org"})
	type side struct {
		name, issuer, ns string
		c                *k8s.Cluster
	}
	sides := []*side{{name: "prod", issuer: k8s.DefaultSAIssuer, c: prod}, {name: "staging", issuer: "https://staging.example.org", c: staging}}
	for _, s := range sides {
		s.ns = s.c.Namespace(t)
		applyCRDs(t, s.c)
		s.c.ServiceAccount(t, s.ns, "tally-agent")
	}
	cfg := harness.ConfigFile(t, `clusters:
  - name: staging
    kubeconfig: `+staging.Kubeconfig+`
    issuer: https://staging.example.org
    service_accounts: ["`+sides[1].ns+`:tally-agent"]
    registrar: true
`)
	server := harness.StartServer(t, "--config", cfg, "--psat-cluster", "prod", "--psat-kubeconfig", prod.Kubeconfig,
		"--psat-issuer", k8s.DefaultSAIssuer, "--psat-service-account", sides[0].ns+":tally-agent", "--registrar")

	pods := map[string]string{} // cluster → its workload pod's UID
	agents := map[string]string{}
	for _, s := range sides {
		node := s.c.Node(t, s.ns+"-node", nil)
		agentPod := s.c.Pod(t, s.ns, "tally-agent", "tally-agent", node.Name, nil, "agent")
		token := s.c.Token(t, s.ns, "tally-agent", []string{"tally-server"}, agentPod, time.Hour)
		tokenFile := filepath.Join(t.TempDir(), "psat")
		require.NoError(t, os.WriteFile(tokenFile, []byte(token), 0o600))
		a := harness.NewAgent(t, server, "--node-attestor", "k8s_psat", "--psat-token-path", tokenFile)
		a.Start(t)
		agents[s.name] = "spiffe://example.org/tally/agent/k8s_psat/" + s.name + "/" + string(node.UID)
		require.Equal(t, agents[s.name], a.ID(t).String(), "reviewed by its own cluster")

		applyClusterIdentity(t, s.c, "web-"+s.ns, s.ns)
		pods[s.name] = string(s.c.Pod(t, s.ns, "web", "web", node.Name, map[string]string{"test": s.ns}).UID)
	}

	type entry struct {
		SPIFFEID string `json:"spiffe_id"`
		ParentID string `json:"parent_id"`
		Owner    *struct {
			Cluster string `json:"cluster"`
			Kind    string `json:"kind"`
			Name    string `json:"name"`
			PodUID  string `json:"pod_uid"`
		} `json:"owner"`
	}
	owned := func() map[string]entry {
		out, stderr, err := server.Ctl("-o", "json", "entry", "list")
		require.NoError(t, err, stderr)
		var list struct{ Entries []entry }
		require.NoError(t, json.Unmarshal([]byte(out), &list))
		m := map[string]entry{}
		for _, e := range list.Entries {
			// Only this test's identities: other tests share prod's API server
			// (TestInstall creates resources there too).
			if e.Owner != nil && e.Owner.Kind == "ClusterIdentity" && (e.Owner.Name == "web-"+sides[0].ns || e.Owner.Name == "web-"+sides[1].ns) {
				m[e.Owner.Cluster] = e
			}
		}
		return m
	}
	require.Eventually(t, func() bool { return len(owned()) == 2 }, time.Minute, 50*time.Millisecond, "an entry in each cluster")
	for _, s := range sides {
		e := owned()[s.name]
		assert.Equal(t, agents[s.name], e.ParentID, s.name)
		assert.Equal(t, pods[s.name], e.Owner.PodUID, s.name)
		assert.Equal(t, "spiffe://example.org/ns/"+s.ns+"/sa/web", e.SPIFFEID, s.name)
	}

	// The staging pod goes: only staging's entry goes.
	stagingPod, err := staging.Client.CoreV1().Pods(sides[1].ns).Get(t.Context(), "web", metav1.GetOptions{})
	require.NoError(t, err)
	staging.DeletePod(t, stagingPod)
	require.Eventually(t, func() bool { _, ok := owned()["staging"]; return !ok }, time.Minute, 50*time.Millisecond)
	assert.Equal(t, pods["prod"], owned()["prod"].Owner.PodUID, "prod's entry stays")
}

var (
	crds       = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	identities = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "clusteridentities"}
)

// applyCRDs applies deploy/crds to c and waits until ClusterIdentities serve.
func applyCRDs(t *testing.T, c *k8s.Cluster) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	files, err := filepath.Glob(filepath.Join(repoRoot(), "deploy", "crds", "tally.dev_*.yaml"))
	require.NoError(t, err)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, o := range deploy.DecodeObjects(t, raw) {
			body, err := json.Marshal(o.Object)
			require.NoError(t, err)
			_, err = dyn.Resource(crds).Patch(t.Context(), o.GetName(), "application/apply-patch+yaml", body,
				metav1.PatchOptions{FieldManager: "tally-test", Force: ptr(true)})
			require.NoError(t, err, f)
		}
	}
	require.Eventually(t, func() bool {
		_, err := dyn.Resource(identities).List(context.Background(), metav1.ListOptions{Limit: 1})
		return err == nil
	}, time.Minute, 100*time.Millisecond, "ClusterIdentities served")
}

// applyClusterIdentity selects the pods labelled test=label, by namespace and service account.
func applyClusterIdentity(t *testing.T, c *k8s.Cluster, name, label string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "tally.dev/v1alpha1", "kind": "ClusterIdentity", "metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
			"podSelector":      map[string]any{"matchLabels": map[string]any{"test": label}},
		},
	}}
	_, err = dyn.Resource(identities).Apply(t.Context(), name, u, metav1.ApplyOptions{FieldManager: "tally-test", Force: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = dyn.Resource(identities).Delete(context.Background(), name, metav1.DeleteOptions{}) })
}
