package k8s

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
)

// These tests run the pod watch against client-go's fake clientset;
// podlistwatch_test.go runs PodListWatch against an HTTP server speaking the
// API server's list and watch JSON, and test/e2e against a real API server.

// mirrorPod is the API server's mirror of the static pod of fixture 116: its
// own UID, the kubelet's in an annotation.
func mirrorPod() corev1.Pod {
	p := staticPod()
	p.UID = "8f9e0d1c-2b3a-4c5d-9e6f-7a8b9c0d1e2f"
	p.Annotations = map[string]string{mirrorAnnotation: uidStatic, "kubernetes.io/config.hash": uidStatic, "kubernetes.io/config.source": "file"}
	return p
}

// startAPIServerAttestor runs an apiserver-mode Attestor on node-1's pods
// until the test ends and waits for its first list.
func startAPIServerAttestor(t testing.TB, pods cache.ListerWatcher, cfg Config) *Attestor {
	t.Helper()
	cfg.PodSource = SourceAPIServer
	cfg.NodeName = "node-1"
	cfg.Pods = pods
	cfg.ProcRoot = fixtureRoot
	a, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { assert.NoError(t, a.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	src := a.src.(*apiserverSource)
	require.Eventually(t, src.informer.HasSynced, 10*time.Second, 5*time.Millisecond)
	return a
}

// fakePods lists and watches the pods of node through client, as
// PodListWatch does through a real API server.
func fakePods(client *fake.Clientset, node string) cache.ListerWatcher {
	sel := fields.OneTermEqualSelector("spec.nodeName", node).String()
	// The fake clientset cannot stream an initial list through a watch;
	// tell the informer so, as client-go's own informers do.
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return client.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return client.CoreV1().Pods(metav1.NamespaceAll).Watch(context.Background(), o)
		},
	}, client)
}

func clientWith(pods ...corev1.Pod) *fake.Clientset {
	objs := make([]runtime.Object, len(pods))
	for i := range pods {
		objs[i] = &pods[i]
	}
	return fake.NewClientset(objs...)
}

func TestAPIServerIndexesPods(t *testing.T) {
	client := clientWith(append(fillerPods(20), webPod(), mirrorPod())...)
	a := startAPIServerAttestor(t, fakePods(client, "node-1"), Config{})

	// The watch asks for this node's pods only.
	var lists int
	for _, act := range client.Actions() {
		if act.GetVerb() != "list" && act.GetVerb() != "watch" {
			continue
		}
		lists++
		var fs string
		switch act := act.(type) {
		case k8stesting.ListAction:
			fs = act.GetListRestrictions().Fields.String()
		case k8stesting.WatchAction:
			fs = act.GetWatchRestrictions().Fields.String()
		}
		assert.Equal(t, "spec.nodeName=node-1", fs, act.GetVerb())
	}
	assert.Positive(t, lists)

	idx := a.src.(*apiserverSource).informer.GetIndexer()
	byUID, err := idx.ByIndex(indexUID, uidBurstable)
	require.NoError(t, err)
	require.Len(t, byUID, 1)
	web := byUID[0].(*corev1.Pod)
	assert.Equal(t, "web-7d9f8b6c5-x2x9q", web.Name)
	assert.Empty(t, web.ManagedFields, "stored slim")
	assert.Empty(t, web.Annotations, "stored slim")
	assert.Empty(t, web.Spec.Containers, "stored slim")
	byStatic, err := idx.ByIndex(indexUID, uidStatic)
	require.NoError(t, err)
	require.Len(t, byStatic, 1, "a mirror pod is indexed by its static pod's UID too")
	byContainer, err := idx.ByIndex(indexContainer, cid("141"))
	require.NoError(t, err)
	require.Len(t, byContainer, 1)
	assert.Equal(t, web, byContainer[0])

	tests := []struct {
		name string
		pid  int32
		want []attest.Selector
	}{
		{
			name: "app container",
			pid:  101,
			want: []attest.Selector{
				sel("ns:shop"),
				sel("sa:web"),
				sel("pod-name:web-7d9f8b6c5-x2x9q"),
				sel("pod-uid:" + uidBurstable),
				sel("node-name:node-1"),
				sel("pod-label:app:web"),
				sel("pod-label:pod-template-hash:7d9f8b6c5"),
				sel("pod-label:tier:frontend"),
				sel("pod-owner:ReplicaSet:web-7d9f8b6c5"),
				sel("container-name:app"),
				sel("container-image:registry.example.com/shop/web:1.4.2"),
				sel("container-image:registry.example.com/shop/web@sha256:" + cid("registry.example.com/shop/web:1.4.2")),
			},
		},
		{
			name: "static pod, through its mirror pod",
			pid:  116,
			want: []attest.Selector{
				sel("ns:kube-system"),
				sel("pod-name:kube-proxy-node-1"),
				sel("pod-uid:" + uidStatic), // the kubelet's UID, as the kubelet source reports it
				sel("node-name:node-1"),
				sel("container-name:kube-proxy"),
				sel("container-image:registry.k8s.io/kube-proxy:v1.34.1"),
				sel("container-image:registry.k8s.io/kube-proxy@sha256:" + cid("registry.k8s.io/kube-proxy:v1.34.1")),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Attest(t.Context(), attest.Process{PID: tt.pid})
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestAPIServerPodStartsLater: a container whose pod status arrives through
// the watch while Attest waits is found.
func TestAPIServerPodStartsLater(t *testing.T) {
	client := clientWith(fillerPods(5)...)
	clk := clocktesting.NewFakeClock(time.Now())
	a := startAPIServerAttestor(t, fakePods(client, "node-1"), Config{Clock: clk})
	// The watch is open: an object created now reaches it.
	require.Eventually(t, func() bool {
		for _, act := range client.Actions() {
			if act.GetVerb() == "watch" {
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond)

	start := clk.Now()
	done := make(chan struct{})
	var sels []attest.Selector
	var err error
	go func() {
		defer close(done)
		sels, err = a.Attest(t.Context(), attest.Process{PID: 101})
	}()
	require.Eventually(t, clk.HasWaiters, 10*time.Second, time.Millisecond, "Attest waits for the container")

	web := webPod()
	_, cerr := client.CoreV1().Pods("shop").Create(t.Context(), &web, metav1.CreateOptions{})
	require.NoError(t, cerr)
	idx := a.src.(*apiserverSource).informer.GetIndexer()
	require.Eventually(t, func() bool {
		objs, _ := idx.ByIndex(indexContainer, cid("101"))
		return len(objs) == 1
	}, 10*time.Second, time.Millisecond, "the watch delivers the pod")

	driveClock(t, clk, 10*time.Millisecond, done)
	require.NoError(t, err)
	assert.Contains(t, sels, sel("container-name:app"))
	assert.Less(t, clk.Since(start), DefaultRetryFor)
}

func TestAPIServerAmbiguous(t *testing.T) {
	client := clientWith(
		pod("a", "one", uidBestEffort, status("c", cid("104"), "img:1")),
		pod("b", "two", uidOther, status("c", cid("104"), "img:1")),
	)
	a := startAPIServerAttestor(t, fakePods(client, "node-1"), Config{})
	sels, err := a.Attest(t.Context(), attest.Process{PID: 104})
	require.ErrorIs(t, err, ErrAmbiguous)
	assert.Nil(t, sels)
	assert.Contains(t, err.Error(), "is listed by pods")
}

// TestAPIServerNotRunning: without Run there is no pod list; Attest waits
// RetryFor for it and says so.
func TestAPIServerNotRunning(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	a, err := New(Config{PodSource: SourceAPIServer, NodeName: "node-1", Pods: fakePods(clientWith(webPod()), "node-1"), ProcRoot: fixtureRoot, Clock: clk})
	require.NoError(t, err)
	start := clk.Now()
	done := make(chan struct{})
	var sels []attest.Selector
	go func() {
		defer close(done)
		sels, err = a.Attest(t.Context(), attest.Process{PID: 101})
	}()
	driveClock(t, clk, 50*time.Millisecond, done)
	require.Error(t, err)
	assert.Nil(t, sels)
	assert.ErrorIs(t, err, errNotSynced)
	assert.GreaterOrEqual(t, clk.Since(start), DefaultRetryFor)
}

func TestAPIServerConfig(t *testing.T) {
	_, err := New(Config{PodSource: SourceAPIServer, Pods: fakePods(clientWith(), "")})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "NodeName is required")
}
