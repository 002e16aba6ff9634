package realnode_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/node"
)

const (
	// namespace is where both installs put Tally: the base's own namespace, and the Helm
	// release's. The tests run one after the other and each removes it.
	namespace   = "tally"
	trustDomain = "example.org" // the manifests' default
	// timeout bounds each wait; it is never a pass/fail criterion.
	timeout = 3 * time.Minute
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	cidGVR = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "clusteridentities"}
	crds   = []string{"clusteridentities.tally.dev", "clusterstaticentries.tally.dev", "delegationpolicies.tally.dev"}
)

// install is one install of Tally on the node: the server StatefulSet and the agent
// DaemonSet in the namespace tally, adapted by an overlay.
type install struct {
	t   *testing.T
	c   *k8s.Cluster
	n   *node.Node
	a   *artifacts
	o   *overlay
	dyn dynamic.Interface
}

func newInstall(t *testing.T, c *k8s.Cluster, n *node.Node, a *artifacts, o *overlay) *install {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	t.Logf("install %s: %s", o.Cluster, o)
	return &install{t: t, c: c, n: n, a: a, o: o, dyn: dyn}
}

// up waits for the server to be Ready and to have published its bundle for the agents'
// first connection (the ConfigMap tally-bundle, bundle_configmap), and waits for the agent
// to be Ready. It returns the agent's pod.
func (in *install) up() *corev1.Pod {
	in.t.Helper()
	t0 := time.Now()
	poll(in.t, "server StatefulSet Ready", func(ctx context.Context) (bool, error) {
		sts, err := in.c.Client.AppsV1().StatefulSets(namespace).Get(ctx, "tally-server", metav1.GetOptions{})
		return err == nil && sts.Status.ReadyReplicas == 1, nil
	}, in.diagnose)
	in.t.Logf("server Ready %s after the objects were applied", time.Since(t0).Round(10*time.Millisecond))

	// The bundle the server published is the one it serves (tallyctl on the host, through the
	// admin socket's host directory: see the overlay).
	bundle := in.tallyctl("bundle", "show", "--format", "pem")
	require.Contains(in.t, bundle, "-----BEGIN CERTIFICATE-----")
	poll(in.t, "the server's tally-bundle ConfigMap", func(ctx context.Context) (bool, error) {
		cm, err := in.c.Client.CoreV1().ConfigMaps(namespace).Get(ctx, "tally-bundle", metav1.GetOptions{})
		return err == nil && strings.TrimSpace(cm.Data["bundle.pem"]) == strings.TrimSpace(bundle), nil
	}, in.diagnose)

	pod := in.waitAgent(nil)
	in.t.Logf("agent %s Ready %s after the objects were applied", pod.Name, time.Since(t0).Round(10*time.Millisecond))
	return pod
}

// waitAgent waits for the DaemonSet's pod other than old (if given) to be Ready and
// returns it.
func (in *install) waitAgent(old *corev1.Pod) *corev1.Pod {
	in.t.Helper()
	var pod *corev1.Pod
	poll(in.t, "agent DaemonSet Ready", func(ctx context.Context) (bool, error) {
		ds, err := in.c.Client.AppsV1().DaemonSets(namespace).Get(ctx, "tally-agent", metav1.GetOptions{})
		if err != nil || ds.Status.DesiredNumberScheduled != 1 || ds.Status.NumberReady != 1 {
			return false, nil
		}
		pods, err := in.c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: labelSelector(ds)})
		if err != nil {
			return false, nil
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if (old == nil || p.UID != old.UID) && p.DeletionTimestamp == nil && podReady(p) {
				pod = p
				return true, nil
			}
		}
		return false, nil
	}, in.diagnose)
	return pod
}

func labelSelector(ds *appsv1.DaemonSet) string {
	return metav1.FormatLabelSelector(ds.Spec.Selector)
}

// agentID is the k8s_psat SPIFFE ID of the node's agent.
func (in *install) agentID() string {
	in.t.Helper()
	kn, err := in.c.Client.CoreV1().Nodes().Get(in.t.Context(), in.n.Name, metav1.GetOptions{})
	require.NoError(in.t, err)
	return fmt.Sprintf("spiffe://%s/tally/agent/k8s_psat/%s/%s", trustDomain, in.o.Cluster, kn.UID)
}

// agentJSON is what the tests read of `tallyctl agent list/show -o json`.
type agentJSON struct {
	SPIFFEID        string `json:"spiffe_id"`
	AttestationType string `json:"attestation_type"`
	AttestedAt      string `json:"attested_at"`
	Selectors       []struct {
		Type, Value string
	} `json:"selectors"`
}

// attestedAgent checks that exactly the node's agent attested, by k8s_psat, and returns it.
func (in *install) attestedAgent() agentJSON {
	in.t.Helper()
	var list struct {
		Agents []agentJSON `json:"agents"`
	}
	require.NoError(in.t, json.Unmarshal([]byte(in.tallyctl("agent", "list", "-o", "json")), &list))
	require.Len(in.t, list.Agents, 1, "agents: %+v", list.Agents)
	got := list.Agents[0]
	require.Equal(in.t, in.agentID(), got.SPIFFEID)
	require.Equal(in.t, "k8s_psat", got.AttestationType)
	var sels []string
	for _, s := range got.Selectors {
		sels = append(sels, s.Type+":"+s.Value)
	}
	require.Contains(in.t, sels, "k8s_psat:cluster:"+in.o.Cluster)
	require.Contains(in.t, sels, "k8s_psat:agent_sa:tally-agent")
	return got
}

// entryJSON is what the tests read of `tallyctl entry list -o json`.
type entryJSON struct {
	ID        string `json:"id"`
	SPIFFEID  string `json:"spiffe_id"`
	ParentID  string `json:"parent_id"`
	Selectors []struct {
		Type, Value string
	} `json:"selectors"`
}

func (e entryJSON) selectors() []string {
	var out []string
	for _, s := range e.Selectors {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

// entries lists the server's entries through its admin socket.
func (in *install) entries() []entryJSON {
	in.t.Helper()
	var list struct {
		Entries []entryJSON `json:"entries"`
	}
	require.NoError(in.t, json.Unmarshal([]byte(in.tallyctl("entry", "list", "-o", "json")), &list))
	return list.Entries
}

// entriesOf returns the entries whose selectors name the pod.
func (in *install) entriesOf(pod *corev1.Pod) []entryJSON {
	in.t.Helper()
	var out []entryJSON
	for _, e := range in.entries() {
		for _, s := range e.selectors() {
			if s == "k8s:pod-uid:"+string(pod.UID) {
				out = append(out, e)
			}
		}
	}
	return out
}

// waitEntry waits until the pod has exactly one entry, with the SPIFFE ID id, and checks
// what the registrar renders: the parent is the node's agent, the selectors are the pod's
// namespace and UID.
func (in *install) waitEntry(pod *corev1.Pod, id string) entryJSON {
	in.t.Helper()
	var got []entryJSON
	poll(in.t, "entry "+id+" for pod "+pod.Name, func(context.Context) (bool, error) {
		got = in.entriesOf(pod)
		return len(got) == 1 && got[0].SPIFFEID == id, nil
	}, func() string { return fmt.Sprintf("entries of the pod: %+v", got) })
	require.Equal(in.t, in.agentID(), got[0].ParentID)
	require.ElementsMatch(in.t, []string{"k8s:ns:" + pod.Namespace, "k8s:pod-uid:" + string(pod.UID)}, got[0].selectors())
	return got[0]
}

// tallyctl runs the host's tallyctl against the server's admin socket and returns its
// standard output; it fails the test on an error.
func (in *install) tallyctl(args ...string) string {
	in.t.Helper()
	cmd := exec.Command(in.a.tallyctl, append([]string{"--socket", in.o.AdminSocket()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(in.t, cmd.Run(), "tallyctl %s: %s", strings.Join(args, " "), stderr.String())
	return stdout.String()
}

// serverLog is the server's log, read through the apiserver (pods/log, which calls the
// kubelet).
func (in *install) serverLog() string {
	in.t.Helper()
	return podLog(in.t, in.c, namespace, "tally-server-0")
}

// attestations counts the server's successful node attestations in its audit log.
func (in *install) attestations() int {
	in.t.Helper()
	n := 0
	for _, line := range strings.Split(in.serverLog(), "\n") {
		if strings.Contains(line, `"action":"attest_agent"`) && strings.Contains(line, `"result":"ok"`) {
			n++
		}
	}
	return n
}

// diagnose describes the install's pods for a failed wait.
func (in *install) diagnose() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	pods, err := in.c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "pod %s: %s %s\n", p.Name, p.Status.Phase, describeStatus(&p))
		logs, _ := in.c.Client.CoreV1().Pods(namespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: ptr(int64(15))}).DoRaw(ctx)
		fmt.Fprintf(&b, "%s\n", logs)
	}
	events, _ := in.c.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if events != nil {
		for _, e := range events.Items {
			if e.Type != corev1.EventTypeNormal {
				fmt.Fprintf(&b, "event %s %s: %s\n", e.InvolvedObject.Name, e.Reason, e.Message)
			}
		}
	}
	return b.String()
}

func describeStatus(p *corev1.Pod) string {
	var parts []string
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			parts = append(parts, fmt.Sprintf("%s=%s (%s)", c.Type, c.Status, c.Message))
		}
	}
	for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			parts = append(parts, fmt.Sprintf("%s waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
		case cs.State.Terminated != nil:
			parts = append(parts, fmt.Sprintf("%s terminated: %d %s", cs.Name, cs.State.Terminated.ExitCode, cs.State.Terminated.Reason))
		}
		if cs.RestartCount > 0 {
			parts = append(parts, fmt.Sprintf("%s restarts %d", cs.Name, cs.RestartCount))
		}
	}
	return strings.Join(parts, "; ")
}

// ---- applying and removing ----

// waitCRDs waits until the apiserver serves the tally.dev resources.
func waitCRDs(t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	for _, name := range crds {
		poll(t, "CRD "+name+" Established", func(ctx context.Context) (bool, error) {
			crd, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, cond := range conds {
				if m, _ := cond.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		}, nil)
	}
}

// deleteAndWait deletes a resource (NotFound is fine) and waits until it is gone; it runs in
// cleanups, so it uses its own context and reports with t.Errorf.
func deleteAndWait(t *testing.T, ri dynamic.ResourceInterface, what, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	bg := metav1.DeletePropagationBackground
	if err := ri.Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete %s %s: %v", what, name, err)
		return
	}
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := ri.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("%s %s still there after %s", what, name, timeout)
		return
	}
	t.Logf("deleted %s %s in %s", what, name, time.Since(t0).Round(10*time.Millisecond))
}

var (
	namespaceGVR = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	pvGVR        = schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumes"}
)

// ---- small helpers ----

// poll calls cond every 200 ms until it holds; after timeout it fails t, with what
// diagnose (if any) says.
func poll(t *testing.T, what string, cond func(context.Context) (bool, error), diagnose func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, cond); err != nil {
		msg := ""
		if diagnose != nil {
			msg = diagnose()
		}
		t.Fatalf("waiting for %s: %v\n%s", what, err, msg)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podLog returns the log of the pod's (only) container, through the apiserver.
func podLog(t *testing.T, c *k8s.Cluster, ns, name string) string {
	t.Helper()
	b, err := c.Client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(t.Context())
	require.NoError(t, err, "logs of %s/%s", ns, name)
	return string(b)
}

func ptr[T any](v T) *T { return &v }
