package realnode_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/tallyid/tally/test/internal/deploy"
)

// TestKustomize installs deploy/base through the test overlay, server-side applied, and
// follows workloads through an identity's life: two greeters get their SVIDs from the agent
// (found by their containerd cgroups and the kubelet's /pods) and talk mTLS; a pod no
// ClusterIdentity selects gets none; a template change reaches an open Workload API stream;
// the agent's pod is replaced without a new node attestation while the workloads keep
// talking; a deleted pod's entry goes.
func TestKustomize(t *testing.T) {
	c, n, a := setup(t)
	o := newOverlay(t, t.TempDir(), c.URL, "realnode-kustomize")
	o.Kustomize = true
	o.ServerTag, o.AgentTag = a.tag("tally-server"), a.tag("tally-agent")
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(repoRoot(), "deploy", "base")) // kustomize takes no absolute base
	require.NoError(t, err)
	o.Resource = rel
	o.write(t, dir)
	in := newInstall(t, c, n, a, o)
	t0 := time.Now()
	in.applyKustomize(dir)
	agentPod := in.up()
	t.Logf("installed in %s", time.Since(t0).Round(10*time.Millisecond))

	// The agent attested with its projected service-account token.
	agent := in.attestedAgent()
	require.Contains(t, podLog(t, c, namespace, agentPod.Name), `"msg":"agent attested"`)

	w := newWorkloads(t, in)
	w.identity("greeter", "greeter", idTemplate)
	w.identity("watch", "watch", idTemplate)

	t.Log("two greeters get their SVIDs and talk mTLS")
	serverID, clientID := w.spiffeID("greeter-server"), w.spiffeID("greeter-client")
	srv := w.greeter("greeter-server", "server", "--addr", "0.0.0.0:9443", "--peer-id", clientID)
	srv = w.waitPod(srv, "running with an IP", func(p *corev1.Pod) bool { return p.Status.PodIP != "" && podReady(p) })
	w.waitLog(srv, "its SVID", func(log string) bool { return strings.Contains(log, "greeter server "+serverID+" listening on") })
	cli := w.greeter("greeter-client", "client", "--addr", net.JoinHostPort(srv.Status.PodIP, "9443"), "--peer-id", serverID)
	log := w.waitLog(cli, "three mTLS calls", func(log string) bool { return okCalls(log) >= 3 })
	require.Contains(t, log, "ok 1: hello "+clientID+", this is "+serverID)
	require.NotContains(t, log, "FAILED")
	t.Logf("greeter client: %s", firstLine(log, "ok 1: "))
	e := in.waitEntry(srv, serverID)
	t.Logf("entry %s: %s, parent %s, selectors %v", e.ID, e.SPIFFEID, e.ParentID, e.selectors())
	cli = w.waitPod(cli, "running", podReady)
	in.waitEntry(cli, clientID)
	checkCgroup(t, in, cli)
	w.waitStatus("greeter", 2)

	t.Log("a pod no ClusterIdentity selects gets no identity")
	// svid watch retries (go-spiffe), so a first attestation that found no pod yet (the
	// kubelet had not listed the container: Unavailable) does not end it
	other := w.tallyctl("unselected", "unselected", "unselected", corev1.RestartPolicyAlways, "svid", "watch", "-o", "json")
	log = w.waitLog(other, "PermissionDenied", func(log string) bool {
		return strings.Contains(log, "no identity issued (PermissionDenied)")
	})
	ids, _ := updates(log)
	require.Empty(t, ids, "SVIDs for a pod no identity selects")
	require.Empty(t, in.entriesOf(other))
	t.Logf("unselected pod: %s", firstLine(log, "Warning"))

	t.Log("a template change reaches an open Workload API stream")
	watchID := w.spiffeID("watcher")
	watch := w.tallyctl("watcher", "watcher", "watch", corev1.RestartPolicyAlways, "svid", "watch", "-o", "json")
	watch = w.waitPod(watch, "running", podReady)
	in.waitEntry(watch, watchID)
	log = w.waitLog(watch, "its SVID", func(log string) bool { return servedAfter(log, watchID, -1) })
	_, lines := updates(log)
	first := lines[0] // go-spiffe may have warned of PermissionDenied before the entry arrived
	w.setTemplate("watch", idTemplate+"/v2")
	v2 := watchID + "/v2"
	log = w.waitLog(watch, "the new SVID", func(log string) bool { return servedAfter(log, v2, first) })
	for i, line := range strings.Split(log, "\n")[first:] {
		// go-spiffe reports every broken stream before it reconnects (svid watch prints it)
		require.NotContains(t, line, "Warning", "the stream broke (line %d after its first SVID):\n%s", i, log)
	}
	in.waitEntry(watch, v2) // the entry changed: no second one for the pod
	t.Logf("watcher, one stream:\n%s", strings.TrimSpace(log))

	t.Log("the agent's pod is replaced; it serves again without attesting")
	require.Equal(t, 1, in.attestations(), "node attestations in the server's audit log")
	calls := okCalls(podLog(t, c, w.ns, cli.Name))
	watchLines := strings.Count(podLog(t, c, w.ns, watch.Name), "\n")
	require.NoError(t, c.Client.CoreV1().Pods(namespace).Delete(t.Context(), agentPod.Name, metav1.DeleteOptions{}))
	newAgent := in.waitAgent(agentPod)
	require.NotEqual(t, agentPod.UID, newAgent.UID)
	log = podLog(t, c, namespace, newAgent.Name)
	require.Contains(t, log, "reusing the stored agent SVID; not attesting")
	t.Logf("new agent %s: %s", newAgent.Name, firstLine(log, `{"time"`))
	// the watcher's stream ended with the old agent; the new one serves it again
	log = w.waitLog(watch, "its SVID from the new agent", func(log string) bool { return servedAfter(log, v2, watchLines-1) })
	t.Logf("watcher, after the agent's replacement:\n%s", strings.Join(strings.Split(strings.TrimSpace(log), "\n")[watchLines:], "\n"))
	// the greeters kept their SVIDs and kept talking
	log = w.waitLog(cli, "more mTLS calls", func(log string) bool { return okCalls(log) >= calls+3 })
	require.NotContains(t, log, "FAILED")
	require.Equal(t, 1, in.attestations(), "node attestations in the server's audit log")
	require.Equal(t, agent.AttestedAt, in.attestedAgent().AttestedAt)
	t.Logf("after the agent's replacement: %d greeter calls (%d before), still 1 node attestation (at %s)",
		okCalls(log), calls, agent.AttestedAt)

	t.Log("a deleted pod's entry is removed")
	require.NoError(t, c.Client.CoreV1().Pods(w.ns).Delete(t.Context(), watch.Name, metav1.DeleteOptions{}))
	poll(t, "the watcher's entry to go", func(context.Context) (bool, error) { return len(in.entriesOf(watch)) == 0, nil }, nil)
	require.Len(t, in.entriesOf(srv), 1, "the other pods keep theirs")
}

// firstLine returns the log's first line that starts with prefix.
func firstLine(log, prefix string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}

// checkCgroup checks what the agent attested the pod's process by: on the host, the
// container's process is in containerd's cgroup of the pod's UID and container ID.
func checkCgroup(t *testing.T, in *install, pod *corev1.Pod) {
	t.Helper()
	require.Len(t, pod.Status.ContainerStatuses, 1)
	cid, ok := strings.CutPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	require.True(t, ok, "container ID %q", pod.Status.ContainerStatuses[0].ContainerID)
	pid, ok := in.n.RunningContainers(t)[cid]
	require.True(t, ok, "container %s not running in containerd", cid)
	cg, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	require.NoError(t, err)
	require.Contains(t, string(cg), "/pod"+string(pod.UID)+"/"+cid)
}

// applyKustomize builds the overlay in dir (kustomize's library, as kubectl apply -k) and
// server-side applies it, CRDs first; everything it applied is deleted when the test ends.
func (in *install) applyKustomize(dir string) {
	in.t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(in.t, err, "kustomize build of the overlay")
	out, err := resMap.AsYaml()
	require.NoError(in.t, err)
	objs := deploy.DecodeObjects(in.t, out)
	in.t.Cleanup(func() { in.deleteApplied(objs) })
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			in.apply(o)
		}
	}
	waitCRDs(in.t, in.dyn)
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			in.apply(o)
		}
	}
}

// apply server-side applies o (field manager realnode-test, strict field validation).
func (in *install) apply(o *unstructured.Unstructured) {
	in.t.Helper()
	ri := in.resource(in.t, o)
	body, err := json.Marshal(o.Object)
	require.NoError(in.t, err)
	_, err = ri.Patch(in.t.Context(), o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		FieldManager: "realnode-test", FieldValidation: "Strict", Force: ptr(true),
	})
	require.NoError(in.t, err, "apply %s %s", o.GetKind(), o.GetName())
}

// resource resolves o's resource through discovery (the CRDs' appear once established).
func (in *install) resource(t *testing.T, o *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	groups, err := restmapper.GetAPIGroupResources(in.c.Client.Discovery())
	require.NoError(t, err)
	gvk := o.GroupVersionKind()
	mapping, err := restmapper.NewDiscoveryRESTMapper(groups).RESTMapping(gvk.GroupKind(), gvk.Version)
	require.NoError(t, err, "%s", gvk)
	if mapping.Scope.Name() == "namespace" {
		return in.dyn.Resource(mapping.Resource).Namespace(o.GetNamespace())
	}
	return in.dyn.Resource(mapping.Resource)
}

// deleteApplied removes an applied install: the namespace (and with it every namespaced
// object, pods and the claim included), then the cluster-scoped objects (RBAC, CRDs, the
// PersistentVolume), waiting for each to be gone.
func (in *install) deleteApplied(objs []*unstructured.Unstructured) {
	deleteAndWait(in.t, in.dyn.Resource(namespaceGVR), "namespace", namespace)
	for _, o := range objs {
		if o.GetNamespace() == "" && o.GetKind() != "Namespace" {
			deleteAndWait(in.t, in.resource(in.t, o), o.GetKind(), o.GetName())
		}
	}
}
