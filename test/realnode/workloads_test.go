package realnode_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// idTemplate is the SPIFFE ID template of the tests' ClusterIdentities.
const idTemplate = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"

// workloads is a namespace of the tests' own pods. They reach the agent as the manifests tell
// workloads to: the host directory of its socket, mounted read-only.
type workloads struct {
	t  *testing.T
	in *install
	ns string
}

// newWorkloads creates the namespace; it is deleted (with its pods) when the test ends.
func newWorkloads(t *testing.T, in *install) *workloads {
	t.Helper()
	ns, err := in.c.Client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "workloads-"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { deleteAndWait(t, in.dyn.Resource(namespaceGVR), "namespace", ns.Name) })
	return &workloads{t: t, in: in, ns: ns.Name}
}

// spiffeID is what idTemplate renders for a pod of the service account sa.
func (w *workloads) spiffeID(sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, w.ns, sa)
}

// identity creates a ClusterIdentity that selects the pods labelled app=<app> in the
// workloads' namespace, with the SPIFFE ID template tmpl; it is deleted when the test ends.
func (w *workloads) identity(name, app, tmpl string) {
	w.t.Helper()
	name = w.ns + "-" + name // cluster-scoped
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "tally.dev/v1alpha1", "kind": "ClusterIdentity",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"spiffeIDTemplate":  tmpl,
			"podSelector":       map[string]any{"matchLabels": map[string]any{"app": app}},
			"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": w.ns}},
		},
	}}
	_, err := w.in.dyn.Resource(cidGVR).Create(w.t.Context(), obj, metav1.CreateOptions{FieldValidation: "Strict"})
	require.NoError(w.t, err)
	w.t.Cleanup(func() { deleteAndWait(w.t, w.in.dyn.Resource(cidGVR), "ClusterIdentity", name) })
}

// waitStatus waits until the registrar reports, in a ClusterIdentity's status (written
// through the install's RBAC), that it selects pods pods and is Ready.
func (w *workloads) waitStatus(name string, pods int64) {
	w.t.Helper()
	var status map[string]any
	poll(w.t, "ClusterIdentity "+name+" status", func(ctx context.Context) (bool, error) {
		obj, err := w.in.dyn.Resource(cidGVR).Get(ctx, w.ns+"-"+name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		status, _, _ = unstructured.NestedMap(obj.Object, "status")
		n, _, _ := unstructured.NestedInt64(obj.Object, "status", "podsSelected")
		conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Ready" && m["status"] == "True" && n == pods {
				return true, nil
			}
		}
		return false, nil
	}, func() string { return fmt.Sprintf("status: %v", status) })
}

// setTemplate changes a ClusterIdentity's SPIFFE ID template.
func (w *workloads) setTemplate(name, tmpl string) {
	w.t.Helper()
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"spiffeIDTemplate": tmpl}})
	require.NoError(w.t, err)
	_, err = w.in.dyn.Resource(cidGVR).Patch(w.t.Context(), w.ns+"-"+name, types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(w.t, err)
}

// pod creates a pod of one container, labelled app=<app>, running as the images' non-root
// user under the service account sa (created here), with the agent's socket directory
// mounted and SPIFFE_ENDPOINT_SOCKET naming the socket. The scheduler places it.
func (w *workloads) pod(name, sa, app, image string, restart corev1.RestartPolicy, args ...string) *corev1.Pod {
	w.t.Helper()
	cs := w.in.c.Client.CoreV1()
	if _, err := cs.ServiceAccounts(w.ns).Get(w.t.Context(), sa, metav1.GetOptions{}); err != nil {
		_, err = cs.ServiceAccounts(w.ns).Create(w.t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		require.NoError(w.t, err)
	}
	pod, err := cs.Pods(w.ns).Create(w.t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			// a workload needs no API access: its identity comes from the agent
			AutomountServiceAccountToken: ptr(false),
			RestartPolicy:                restart,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(nonroot)), RunAsGroup: ptr(int64(nonroot)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            app,
				Image:           image,
				ImagePullPolicy: corev1.PullIfNotPresent, // imported; nothing can be pulled
				Args:            args,
				Env:             []corev1.EnvVar{{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/spiffe/agent.sock"}},
				VolumeMounts:    []corev1.VolumeMount{{Name: "spiffe-workload-api", MountPath: "/run/spiffe", ReadOnly: true}},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
			Volumes: []corev1.Volume{{Name: "spiffe-workload-api", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: w.in.o.SocketDir, Type: ptr(corev1.HostPathDirectory)},
			}}},
		},
	}, metav1.CreateOptions{})
	require.NoError(w.t, err)
	return pod
}

// greeter runs examples/greeter's image (from scripts/images -examples) in mode server or
// client, under the service account name.
func (w *workloads) greeter(name string, args ...string) *corev1.Pod {
	w.t.Helper()
	return w.pod(name, name, "greeter", w.in.a.tags["greeter"], corev1.RestartPolicyAlways, args...)
}

// tallyctl runs tallyctl (a Workload API client: svid fetch, svid watch) in a pod.
func (w *workloads) tallyctl(name, sa, app string, restart corev1.RestartPolicy, args ...string) *corev1.Pod {
	w.t.Helper()
	return w.pod(name, sa, app, tallyctlImage, restart, args...)
}

// waitPod waits until ok holds for the pod and returns it.
func (w *workloads) waitPod(pod *corev1.Pod, what string, ok func(*corev1.Pod) bool) *corev1.Pod {
	w.t.Helper()
	cur := pod
	poll(w.t, "pod "+pod.Name+" "+what, func(ctx context.Context) (bool, error) {
		p, err := w.in.c.Client.CoreV1().Pods(w.ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		cur = p
		return ok(p), nil
	}, func() string { return w.describe(cur) })
	return cur
}

// waitLog waits until ok holds for the pod's log, read through the apiserver, and returns
// the log.
func (w *workloads) waitLog(pod *corev1.Pod, what string, ok func(log string) bool) string {
	w.t.Helper()
	var log string
	poll(w.t, pod.Name+" to log "+what, func(ctx context.Context) (bool, error) {
		b, err := w.in.c.Client.CoreV1().Pods(w.ns).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, nil // not started yet
		}
		log = string(b)
		return ok(log), nil
	}, func() string { return w.describe(pod) + "\nits log:\n" + log + "\n" + w.in.diagnose() })
	return log
}

func (w *workloads) describe(pod *corev1.Pod) string {
	p, err := w.in.c.Client.CoreV1().Pods(w.ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("pod %s: %s %s", p.Name, p.Status.Phase, describeStatus(p))
}

// ---- what the workloads print ----

// x509Update is one line of `tallyctl svid watch -o json`.
type x509Update struct {
	SVIDs []struct {
		SPIFFEID string `json:"spiffe_id"`
	} `json:"svids"`
}

// updates parses the JSON lines of a svid watch log, in order, and returns them with the
// index of each one's line. (Warnings are not JSON.)
func updates(log string) (ids [][]string, lines []int) {
	for i, line := range strings.Split(log, "\n") {
		var u x509Update
		if json.Unmarshal([]byte(line), &u) != nil || u.SVIDs == nil {
			continue
		}
		var got []string
		for _, s := range u.SVIDs {
			got = append(got, s.SPIFFEID)
		}
		ids, lines = append(ids, got), append(lines, i)
	}
	return ids, lines
}

// servedAfter reports whether a watch log has an update serving exactly id at a line after
// line from (-1: anywhere).
func servedAfter(log, id string, from int) bool {
	ids, lines := updates(log)
	for i := range ids {
		if lines[i] > from && len(ids[i]) == 1 && ids[i][0] == id {
			return true
		}
	}
	return false
}

// okCalls counts the greeter client's successful mTLS calls.
func okCalls(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.HasPrefix(line, "ok ") {
			n++
		}
	}
	return n
}
