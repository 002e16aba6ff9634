package registrar_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
)

const nsSATemplate = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"

// A scheduled pod gets the entry its ClusterIdentity renders, with the
// owner mark and the agent of its node as parent; a pending pod gets
// none; a changed template updates the entry in place; a deleted pod's
// entry is deleted. Each pod change is at most one write.
func TestPodLifecycle(t *testing.T) {
	e := newEnv(t)
	metrics := e.start("prod", nil)
	e.identity("web", map[string]any{"spiffeIDTemplate": nsSATemplate, "dnsNameTemplates": []any{"{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc"}})

	pending := e.c.Pod(t, e.ns, "pending", "web", "", map[string]string{"test": e.label})
	pod := e.pod("web-0", nil)
	key := "web " + e.ns + "/web-0"
	got := e.eventually("prod", "the scheduled pod's entry", func(m map[string]store.Entry) bool { _, ok := m[key]; return ok })
	require.Len(t, got, 1, "a pending pod has no entry")
	entry := got[key]
	assert.Equal(t, "spiffe://example.org/ns/"+e.ns+"/sa/web", entry.SPIFFEID)
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod/"+string(e.node.UID), entry.ParentID, "the agent of the pod's node")
	assert.ElementsMatch(t, []store.Selector{{Type: "k8s", Value: "ns:" + e.ns}, {Type: "k8s", Value: "pod-uid:" + string(pod.UID)}}, entry.Selectors)
	assert.Equal(t, []string{"web-0." + e.ns + ".svc"}, entry.DNSNames)
	assert.Equal(t, &store.Owner{Cluster: "prod", Kind: registry.OwnerClusterIdentity, Name: "web", Pod: e.ns + "/web-0", PodUID: string(pod.UID)}, entry.Owner)

	status := e.status(identities, "web", func(s map[string]any) bool { return count(s, "podsSelected") == 1 })
	st, reason, _ := condition(status, "Ready")
	assert.Equal(t, "True", st)
	assert.Equal(t, "Reconciled", reason)
	assert.EqualValues(t, 0, count(status, "renderFailures"))

	// The pending pod is scheduled: now it has an entry.
	writes := e.entries.writes.Load()
	pending.Spec.NodeName = e.node.Name
	bind(t, e, pending)
	e.eventually("prod", "the bound pod's entry", func(m map[string]store.Entry) bool { return len(m) == 2 })
	assert.Equal(t, writes+1, e.entries.writes.Load(), "one write for one pod change")

	// The template changes: the entry is updated in place, same ID.
	e.identity("web", map[string]any{"spiffeIDTemplate": "spiffe://example.org/web/{{ .PodMeta.Name }}"})
	got = e.eventually("prod", "the new template", func(m map[string]store.Entry) bool {
		return m[key].SPIFFEID == "spiffe://example.org/web/web-0"
	})
	assert.Equal(t, entry.ID, got[key].ID, "updated in place")
	assert.Empty(t, got[key].DNSNames)

	// The pod is deleted: its entry goes, the other stays.
	e.c.DeletePod(t, pod)
	got = e.eventually("prod", "the deleted pod's entry gone", func(m map[string]store.Entry) bool { _, ok := m[key]; return !ok })
	assert.Len(t, got, 1)

	assert.Equal(t, 1.0, testutil.ToFloat64(metricNamed(t, metrics, "tally_registrar_entries")))
	for _, name := range []string{"tally_registrar_render_seconds", "tally_registrar_write_seconds", "tally_registrar_event_to_entry_seconds"} {
		assert.Positive(t, histogramCount(t, metrics, name), name)
	}
}

// bind sets a pending pod's node through the binding subresource, as the
// scheduler does.
func bind(t *testing.T, e *env, pod *corev1.Pod) {
	t.Helper()
	err := e.c.Client.CoreV1().Pods(pod.Namespace).Bind(t.Context(), &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: pod.Spec.NodeName},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// The registrar's own status writes come back as updates of the
// ClusterIdentity; they must not queue every pod again (at 10,000 pods
// that queue delayed each real change by seconds).
func TestStatusWritesQueueNoPods(t *testing.T) {
	e := newEnv(t)
	metrics := e.start("prod", nil)
	e.identity("web", map[string]any{"spiffeIDTemplate": "spiffe://example.org/web/{{ .PodMeta.Name }}"})
	const pods = 30
	for i := range pods {
		e.pod(fmt.Sprintf("p%d", i), nil)
	}
	e.eventually("prod", "every entry", func(m map[string]store.Entry) bool { return len(m) == pods })
	e.status(identities, "web", func(s map[string]any) bool { return count(s, "podsSelected") == pods })
	before := reconciles(t, metrics, "unchanged")

	e.pod("one-more", nil) // its status write comes back as an update
	e.status(identities, "web", func(s map[string]any) bool { return count(s, "podsSelected") == pods+1 })
	time.Sleep(300 * time.Millisecond) // a requeue of every pod would have run by now
	assert.Less(t, reconciles(t, metrics, "unchanged")-before, float64(pods/2), "a status write queued the pods again")
}

func reconciles(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	for _, mf := range gather(t, reg) {
		if mf.GetName() != "tally_registrar_reconciles_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no reconciles_total{result=%q}", result)
	return 0
}

// The API server's mirror of a static pod: its entry names the UID its
// cgroups carry (the kubelet's), the one the agent's attestation reports
// from either pod source.
func TestMirrorPodEntry(t *testing.T) {
	e := newEnv(t)
	e.start("prod", nil)
	e.identity("static", map[string]any{"spiffeIDTemplate": "spiffe://example.org/static/{{ .PodMeta.Name }}"})
	const kubeletUID = "3c7b9e1f5a2d4c6e8b0a1d3f5e7c9b2a"
	// Created as a kubelet would mirror it: no service account (the API
	// server refuses one on a mirror pod), so not through e.c.CreatePod.
	pod, err := e.c.Client.CoreV1().Pods(e.ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "kube-proxy-" + e.node.Name, Labels: map[string]string{"test": e.label},
			Annotations: map[string]string{"kubernetes.io/config.mirror": kubeletUID, "kubernetes.io/config.hash": kubeletUID}},
		Spec: corev1.PodSpec{NodeName: e.node.Name, Containers: []corev1.Container{{Name: "main", Image: "registry.example/proxy:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { e.c.DeletePod(t, pod) })
	got := e.eventually("prod", "the mirror pod's entry", func(m map[string]store.Entry) bool { return len(m) == 1 })
	for _, en := range got {
		assert.Contains(t, en.Selectors, store.Selector{Type: "k8s", Value: "pod-uid:" + kubeletUID})
		assert.Equal(t, string(pod.UID), en.Owner.PodUID, "the registrar keys it by the API server's UID")
	}
}
