package k8s

import (
	"github.com/tallyid/tally/attest"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
)

// hundredPods is a node's 100 pods, one of them the pod of fixture 101.
func hundredPods() []corev1.Pod {
	pods := fillerPods(99)
	return append(pods[:50:50], append([]corev1.Pod{webPod()}, pods[50:]...)...)
}

// BenchmarkAttestKubelet100Pods attests one process again and again against
// a kubelet over TLS listing 100 pods, with the real clock: the pod list is
// fetched again each second, the rest are cache hits.
func BenchmarkAttestKubelet100Pods(b *testing.B) {
	ca := newTestCA(b, "kubelet-ca")
	pods := hundredPods()
	k := newFakeKubelet(b, ca, func() []corev1.Pod { return pods })
	a, err := New(kubeletConfig(b, k, ca))
	require.NoError(b, err)
	benchAttest(b, a)
	b.ReportMetric(float64(len(k.requests())), "kubelet-requests")
}

// BenchmarkAttestAPIServer100Pods attests one process again and again
// against the watch of a node with 100 pods.
func BenchmarkAttestAPIServer100Pods(b *testing.B) {
	a := startAPIServerAttestor(b, fakePods(clientWith(hundredPods()...), "node-1"), Config{})
	benchAttest(b, a)
}

func benchAttest(b *testing.B, a *Attestor) {
	b.Helper()
	sels, err := a.Attest(b.Context(), attest.Process{PID: 101})
	require.NoError(b, err)
	require.Contains(b, sels, sel("container-name:app"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(b.Context(), attest.Process{PID: 101}); err != nil {
			b.Fatal(err)
		}
	}
}
