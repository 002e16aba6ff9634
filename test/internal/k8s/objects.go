package k8s

import (
	"context"
	"runtime"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// DefaultTokenTTL is the lifetime Token requests when given 0.
const DefaultTokenTTL = time.Hour

// Namespace creates a namespace with a fresh generated name (prefix "tally-") and returns the
// name. Namespaces are never deleted: without a controller-manager they stay Terminating
// forever, so every test takes its own.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "tally-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("k8s: create namespace: %v", err)
	}
	return ns.Name
}

// ServiceAccount creates the ServiceAccount ns/name and returns it; if it already exists it
// returns the existing one. (No controller creates "default" here.)
func (c *Cluster) ServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	sa, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		sa, err = c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("k8s: service account %s/%s: %v", ns, name, err)
	}
	return sa
}

// Node creates a Node object (no kubelet behind it) named name with labels, plus the labels a
// kubelet registers itself with (kubernetes.io/hostname, kubernetes.io/os, kubernetes.io/arch)
// unless labels overrides them. Tokens bound to a pod on an existing node carry the node's
// name and uid. The node is deleted when the test ends.
func (c *Cluster) Node(t testing.TB, name string, labels map[string]string) *corev1.Node {
	t.Helper()
	l := map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     runtime.GOARCH,
	}
	for k, v := range labels {
		l[k] = v
	}
	ctx, cancel := callCtx()
	defer cancel()
	node, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("k8s: create node %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := callCtx()
		defer cancel()
		_ = c.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return node
}

// Image is the image Pod gives a container named name.
func Image(name string) string { return "registry.example/tally-test/" + name + ":1.0" }

// Pod creates pod ns/name running as service account sa (default "default"), already bound to
// nodeName (no scheduler runs), with labels and one container per name in containers (default
// a single "main"), each with image Image(name) and no resources (QoS BestEffort). The service
// account is created first if missing. The returned object carries the server-assigned uid
// and status.qosClass. The pod is force-deleted when the test ends.
func (c *Cluster) Pod(t testing.TB, ns, name, sa, nodeName string, labels map[string]string, containers ...string) *corev1.Pod {
	t.Helper()
	if len(containers) == 0 {
		containers = []string{"main"}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: nodeName},
	}
	for _, n := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: n, Image: Image(n)})
	}
	return c.CreatePod(t, pod)
}

// CreatePod creates an arbitrary pod (for resources, init containers, ...), first creating its
// service account (spec.serviceAccountName, default "default") if missing. The pod is
// force-deleted when the test ends.
func (c *Cluster) CreatePod(t testing.TB, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = "default"
	}
	c.ServiceAccount(t, pod.Namespace, pod.Spec.ServiceAccountName)
	ctx, cancel := callCtx()
	defer cancel()
	created, err := c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("k8s: create pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	t.Cleanup(func() { _ = c.deletePod(created) })
	return created
}

// Token returns a service-account token for ns/sa with the given audiences (nil: the
// apiserver's default audience, DefaultSAIssuer), obtained through the TokenRequest API exactly
// as a kubelet obtains the projected token it mounts: bound to pod when pod is non-nil (the
// token then dies with the pod and its review carries pod-name/pod-uid, and node-name/node-uid
// when the node object exists). ttl 0 means DefaultTokenTTL; the apiserver rejects a ttl under
// 10 minutes.
func (c *Cluster) Token(t testing.TB, ns, sa string, audiences []string, pod *corev1.Pod, ttl time.Duration) string {
	t.Helper()
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	secs := int64(ttl / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         audiences,
		ExpirationSeconds: &secs,
	}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		}
	}
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("k8s: token for %s/%s: %v", ns, sa, err)
	}
	return resp.Status.Token
}

// TerminatePod requests the deletion of pod with a grace period of an hour and returns the pod
// as the apiserver then has it: Terminating, with deletionTimestamp set. No kubelet confirms the
// deletion, so the pod stays Terminating until the test's cleanup force-deletes it. Its bound
// tokens keep reviewing as authenticated until a minute past the deletionTimestamp.
func (c *Cluster) TerminatePod(t testing.TB, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	grace := int64(3600)
	err := c.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &grace,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil {
		t.Fatalf("k8s: terminate pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	got, err := c.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("k8s: terminate pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	if got.DeletionTimestamp == nil {
		t.Fatalf("k8s: terminate pod %s/%s: no deletionTimestamp after a graceful delete", pod.Namespace, pod.Name)
	}
	return got
}

// SetPodPhase writes phase into pod's status (as its kubelet would) and returns the updated
// pod. A pod in phase Failed or Succeeded is deleted at once by a later DeletePod.
func (c *Cluster) SetPodPhase(t testing.TB, pod *corev1.Pod, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	cur, err := c.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("k8s: pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	cur.Status.Phase = phase
	got, err := c.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("k8s: set phase of pod %s/%s to %s: %v", pod.Namespace, pod.Name, phase, err)
	}
	return got
}

// DeletePod deletes pod with gracePeriodSeconds=0 (no kubelet confirms a graceful delete) and
// a uid precondition, and returns once the apiserver no longer has it. Deleting an already
// deleted pod is not an error. Remember the 10 s token-authentication cache (package doc).
func (c *Cluster) DeletePod(t testing.TB, pod *corev1.Pod) {
	t.Helper()
	if err := c.deletePod(pod); err != nil {
		t.Fatalf("k8s: delete pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

func (c *Cluster) deletePod(pod *corev1.Pod) error {
	ctx, cancel := callCtx()
	defer cancel()
	zero := int64(0)
	err := c.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) { // conflict: uid differs, ours is gone
		return nil
	}
	if err != nil {
		return err
	}
	return wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return err == nil && p.UID != pod.UID, err
	})
}
