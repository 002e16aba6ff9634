// Package nodesim simulates the kubelet of one node against a real kube-apiserver started by
// test/internal/k8s. It is the one fake in Tally's Kubernetes tests, because no kubelet can run
// here; everything it touches is real:
//
//   - it watches the pods bound to its node and reports them Running through the pods/status
//     subresource, with containerStatuses carrying "containerd://<64 hex>" container IDs;
//   - it starts real processes in real cgroups named as a kubelet (cgroupfs or systemd driver)
//     with containerd names them (Node.RunContainer, Node.RunCommand);
//   - it serves the kubelet's authenticated `GET /pods` over HTTPS, checking bearer tokens with
//     a real TokenReview.
//
// Unlike a kubelet it never kills a container's process when its pod is deleted: the test
// owns the processes (they are killed when the test ends or by Container.Stop).
package nodesim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/tallyid/tally/test/internal/k8s"
)

// CgroupDriver is the kubelet's cgroup driver, which decides how container cgroups are named.
type CgroupDriver string

const (
	// Cgroupfs names container cgroups kubepods/<qos>/pod<uid>/<container-id> (no <qos> level
	// for Guaranteed pods).
	Cgroupfs CgroupDriver = "cgroupfs"
	// Systemd names them kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with
	// underscores>.slice/cri-containerd-<container-id>.scope (no <qos> level for Guaranteed).
	Systemd CgroupDriver = "systemd"
)

// Options configures a simulated node. The zero value is a cgroupfs node that reports pods
// Running as soon as it sees them.
type Options struct {
	// CgroupDriver defaults to Cgroupfs.
	CgroupDriver CgroupDriver
	// StartDelay is how long after the simulator first sees a pod its containers start: until
	// then /pods reports the pod Pending with containers Waiting (ContainerCreating) and no
	// container IDs, as a kubelet does while it creates them, and the API status is untouched.
	// RunContainer works during the delay, so a workload can run before /pods knows its
	// container — the race an attestor must retry through.
	StartDelay time.Duration
	// ContainerID, if set, chooses the container ID (64 lowercase hex) of a container; ""
	// falls back to a random one. Returning the same ID for two pods makes both report it.
	// It is called once per container, from the simulator's goroutines.
	ContainerID func(pod *corev1.Pod, container string) string
	// Authorize makes /pods also require a SubjectAccessReview allowing `get nodes/proxy` on
	// this node (the real kubelet's authorization, 403 otherwise). Off by default: any
	// authenticated token may read /pods.
	Authorize bool
	// AuthCacheTTL is how long a successful token authentication (and authorization) is cached;
	// default 5 s, negative disables. Failures are never cached.
	AuthCacheTTL time.Duration
}

// Node is one simulated kubelet. Its exported fields are read-only; methods are safe for
// concurrent use.
type Node struct {
	// Name is the node name; pods with spec.nodeName == Name are this node's.
	Name string
	// URL is the kubelet API's base URL, https://127.0.0.1:<port> (GET URL+"/pods").
	URL string
	// CAFile is the PEM file of the CA that signed the kubelet serving certificate (SANs
	// 127.0.0.1, localhost and Name). CAPEM is its content.
	CAFile string
	CAPEM  []byte

	cluster  *k8s.Cluster
	opts     Options
	t        testing.TB
	informer cache.SharedIndexInformer
	queue    workqueue.TypedDelayingInterface[string]

	mu     sync.Mutex
	pods   map[types.UID]*podState
	nextIP uint32
	subnet byte

	srv *kubeletServer
}

// podState is what the simulated kubelet decided about one pod.
type podState struct {
	ids      map[string]string // container name (regular and init) -> container ID
	ip       string
	seen     time.Time // when the simulator first saw the pod: status.startTime
	started  time.Time // seen + StartDelay: containers running from then on
	reported bool      // the Running status has been written to the API
}

// Start runs a simulated kubelet for nodeName against cluster until the test ends. It does not
// create the Node object (use Cluster.Node first if tokens should carry node claims). Start
// returns once the pod watch has synced and the HTTPS server listens.
func Start(t testing.TB, cluster *k8s.Cluster, nodeName string, opts Options) *Node {
	t.Helper()
	if opts.CgroupDriver == "" {
		opts.CgroupDriver = Cgroupfs
	}
	if opts.CgroupDriver != Cgroupfs && opts.CgroupDriver != Systemd {
		t.Fatalf("nodesim: unknown cgroup driver %q", opts.CgroupDriver)
	}
	if opts.AuthCacheTTL == 0 {
		opts.AuthCacheTTL = 5 * time.Second
	}
	h := fnv.New32a()
	h.Write([]byte(nodeName))
	n := &Node{
		Name:    nodeName,
		cluster: cluster,
		opts:    opts,
		t:       t,
		pods:    map[types.UID]*podState{},
		subnet:  byte(h.Sum32()),
		queue:   workqueue.NewTypedDelayingQueue[string](),
	}

	lw := cache.NewFilteredListWatchFromClient(cluster.Client.CoreV1().RESTClient(), "pods", metav1.NamespaceAll,
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
		})
	n.informer = cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			n.queue.Add(key)
		}
	}
	if _, err := n.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				n.mu.Lock()
				delete(n.pods, pod.UID)
				n.mu.Unlock()
			}
		},
	}); err != nil {
		t.Fatalf("nodesim: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.informer.RunWithContext(ctx) })
	wg.Go(func() { n.work(ctx) })
	stop := func() {
		cancel()
		n.queue.ShutDown()
		wg.Wait()
	}
	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), n.informer.HasSynced) {
		stop()
		t.Fatalf("nodesim: pod watch for node %s did not sync", nodeName)
	}

	srv, err := startKubeletServer(t, n)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	n.srv, n.URL, n.CAFile, n.CAPEM = srv, srv.url, srv.caFile, srv.caPEM
	t.Cleanup(func() {
		srv.close()
		stop()
	})
	return n
}

// work processes pod keys until the queue shuts down.
func (n *Node) work(ctx context.Context) {
	for {
		key, shutdown := n.queue.Get()
		if shutdown {
			return
		}
		if err := n.syncPod(ctx, key); err != nil && ctx.Err() == nil {
			n.queue.AddAfter(key, 200*time.Millisecond)
		}
		n.queue.Done(key)
	}
}

// syncPod does for one pod what the kubelet's pod workers do: start containers (after
// StartDelay), report the Running status, and confirm graceful deletions.
func (n *Node) syncPod(ctx context.Context, key string) error {
	obj, exists, err := n.informer.GetStore().GetByKey(key)
	if err != nil || !exists {
		return err
	}
	pod := obj.(*corev1.Pod)
	pods := n.cluster.Client.CoreV1().Pods(pod.Namespace)
	if pod.DeletionTimestamp != nil {
		// A kubelet finishes a graceful deletion once the containers are gone.
		zero := int64(0)
		err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	st := n.state(pod)
	now := time.Now()
	if now.Before(st.started) {
		n.queue.AddAfter(key, st.started.Sub(now))
		return nil
	}
	n.mu.Lock()
	reported := st.reported
	n.mu.Unlock()
	if reported {
		return nil
	}
	update := pod.DeepCopy()
	update.Status = n.podStatus(pod, st, now)
	if _, err := pods.UpdateStatus(ctx, update, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		if !apierrors.IsConflict(err) && ctx.Err() == nil {
			n.t.Logf("nodesim %s: update status of %s: %v", n.Name, key, err)
		}
		return err
	}
	n.mu.Lock()
	st.reported = true
	n.mu.Unlock()
	return nil
}

// state returns the simulator's state for pod, creating it (container IDs, pod IP, start
// time) the first time the pod is seen. The returned state's ids, ip, seen and started never
// change.
func (n *Node) state(pod *corev1.Pod) *podState {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st, ok := n.pods[pod.UID]; ok {
		return st
	}
	now := time.Now()
	n.nextIP++
	st := &podState{
		ids:     map[string]string{},
		ip:      fmt.Sprintf("10.%d.%d.%d", 100+n.subnet%100, (n.nextIP/250)%256, n.nextIP%250+2),
		seen:    now,
		started: now.Add(n.opts.StartDelay),
	}
	for _, c := range allContainers(pod) {
		id := ""
		if n.opts.ContainerID != nil {
			id = n.opts.ContainerID(pod, c.Name)
		}
		if id == "" {
			id = randomID()
		}
		st.ids[c.Name] = id
	}
	n.pods[pod.UID] = st
	return st
}

// lookup returns the current pod object with uid and its state, once the simulator has seen it.
func (n *Node) lookup(uid types.UID) (*corev1.Pod, *podState, bool) {
	for _, obj := range n.informer.GetStore().List() {
		if pod := obj.(*corev1.Pod); pod.UID == uid {
			return pod, n.state(pod), true
		}
	}
	return nil, nil, false
}

// ContainerID returns the container ID (64 hex, without "containerd://") the simulator gave
// container of pod, waiting up to 30 s for the simulator to see the pod; it fails the test
// otherwise.
func (n *Node) ContainerID(t testing.TB, pod *corev1.Pod, container string) string {
	t.Helper()
	_, st := n.waitPod(t, pod)
	id, ok := st.ids[container]
	if !ok {
		t.Fatalf("nodesim: pod %s/%s has no container %q", pod.Namespace, pod.Name, container)
	}
	return id
}

// waitPod waits until the simulator has seen pod (by uid).
func (n *Node) waitPod(t testing.TB, pod *corev1.Pod) (*corev1.Pod, *podState) {
	t.Helper()
	if pod.Spec.NodeName != n.Name {
		t.Fatalf("nodesim: pod %s/%s is bound to %q, not to node %q", pod.Namespace, pod.Name, pod.Spec.NodeName, n.Name)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p, st, ok := n.lookup(pod.UID); ok {
			return p, st
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodesim: node %s never saw pod %s/%s (uid %s)", n.Name, pod.Namespace, pod.Name, pod.UID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func allContainers(pod *corev1.Pod) []corev1.Container {
	return append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
}

func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
