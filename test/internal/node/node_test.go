package node_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/node"
)

// timeout bounds each wait of these tests; it is never a pass/fail criterion.
const timeout = 2 * time.Minute

func TestNode(t *testing.T) {
	c := k8s.StartWith(t, k8s.Options{Kubelet: true})
	hello := node.BuildImage(t, node.HelloPackage, node.HelloImage)
	ipForward := readTrim(t, "/proc/sys/net/ipv4/ip_forward")
	n := node.Start(t, c, node.Options{Images: []string{hello}})

	kn, err := c.Client.CoreV1().Nodes().Get(t.Context(), n.Name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.True(t, nodeReady(kn), "node conditions: %v", kn.Status.Conditions)
	assert.Equal(t, "localhost", n.Name)

	ns := c.Namespace(t)
	pod := c.CreatePod(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hello"},
		Spec: corev1.PodSpec{
			NodeName:   n.Name, // no scheduling: the kubelet takes it at once
			Containers: []corev1.Container{helloContainer()},
		},
	})
	pod = waitPod(t, c, pod, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	require.Len(t, pod.Status.ContainerStatuses, 1)
	cid, ok := strings.CutPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	require.True(t, ok, "container ID %q", pod.Status.ContainerStatuses[0].ContainerID)
	assert.Regexp(t, `^[0-9a-f]{64}$`, cid)
	assert.NotEmpty(t, pod.Status.PodIP, "pod network address from the CNI bridge")

	t.Run("container cgroup carries the pod UID", func(t *testing.T) {
		// in the pod's own view, read through the apiserver (which calls the kubelet over TLS)
		var logs string
		poll(t, func(ctx context.Context) (bool, error) {
			b, err := c.Client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
			logs = string(b)
			return err == nil && strings.Contains(logs, "/proc/self/cgroup:"), nil
		})
		assert.Contains(t, logs, "hello from hello")
		assert.Contains(t, logs, "/pod"+string(pod.UID)+"/"+cid)
		// and on the host, as a node agent attesting a workload by PID sees it
		pid, ok := n.RunningContainers(t)[cid]
		require.True(t, ok, "container %s not running in containerd", cid)
		cg := readTrim(t, "/proc/"+strconv.Itoa(pid)+"/cgroup")
		assert.Contains(t, cg, n.CgroupRoot+"/kubepods/besteffort/pod"+string(pod.UID)+"/"+cid)
	})

	t.Run("kubelet /pods over verified TLS with a bearer token", func(t *testing.T) {
		token := nodeProxyToken(t, c, ns)
		hc := kubeletClient(t, n)
		status, body := get(t, hc, n.KubeletURL+"/pods", "")
		assert.Equal(t, http.StatusUnauthorized, status, "anonymous: %s", body)
		// RBAC's and the kubelet's authorization caches need a moment for the new binding
		poll(t, func(context.Context) (bool, error) {
			status, body = get(t, hc, n.KubeletURL+"/pods", token)
			return status == http.StatusOK, nil
		})
		var list corev1.PodList
		require.NoError(t, json.Unmarshal([]byte(body), &list))
		var found *corev1.Pod
		for i := range list.Items {
			if list.Items[i].UID == pod.UID {
				found = &list.Items[i]
			}
		}
		require.NotNil(t, found, "pod %s not in the kubelet's /pods", pod.UID)
		require.Len(t, found.Status.ContainerStatuses, 1)
		assert.Equal(t, "containerd://"+cid, found.Status.ContainerStatuses[0].ContainerID)
	})

	t.Run("DaemonSet pod becomes Ready", func(t *testing.T) {
		labels := map[string]string{"app": "ds"}
		c.ServiceAccount(t, ns, "default") // the controller-manager creates it too; no race
		ds, err := c.Client.AppsV1().DaemonSets(ns).Create(t.Context(), &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Name: "ds"},
			Spec: appsv1.DaemonSetSpec{
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						HostNetwork: true, // as a node agent runs
						Containers:  []corev1.Container{helloContainer()},
					},
				},
			},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		poll(t, func(ctx context.Context) (bool, error) {
			ds, err = c.Client.AppsV1().DaemonSets(ns).Get(ctx, ds.Name, metav1.GetOptions{})
			return err == nil && ds.Status.DesiredNumberScheduled == 1 && ds.Status.NumberReady == 1, nil
		})
		pods, err := c.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=ds"})
		require.NoError(t, err)
		require.Len(t, pods.Items, 1)
		assert.Equal(t, n.Name, pods.Items[0].Spec.NodeName, "scheduled onto the node")
		assert.True(t, podReady(&pods.Items[0]))
	})

	t.Run("pod delete removes its container", func(t *testing.T) {
		pid := n.RunningContainers(t)[cid]
		require.NotZero(t, pid)
		// graceful: the kubelet stops the container, then confirms the deletion
		require.NoError(t, c.Client.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}))
		poll(t, func(ctx context.Context) (bool, error) {
			_, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		assert.NotContains(t, n.RunningContainers(t), cid)
		assert.False(t, alive(pid), "container process %d still alive", pid)
	})

	pids := []int{n.KubeletPID, n.ContainerdPID, n.NamespacePID, n.SchedulerPID, n.ControllerManagerPID}
	for _, pid := range n.RunningContainers(t) {
		pids = append(pids, pid) // the DaemonSet's pod
	}
	n.Stop(t)
	assertNothingLeft(t, n, pids, ipForward)

	t.Run("Shared starts one node and Stop removes it", func(t *testing.T) {
		var s node.Shared
		a := s.Get(t, c)
		assert.Same(t, a, s.Get(t, c))
		pids := []int{a.KubeletPID, a.ContainerdPID, a.NamespacePID, a.SchedulerPID, a.ControllerManagerPID}
		s.Stop()
		assertNothingLeft(t, a, pids, ipForward)
	})
}

func helloContainer() corev1.Container {
	return corev1.Container{
		Name:            "hello",
		Image:           node.HelloImage,
		ImagePullPolicy: corev1.PullNever, // nothing can be pulled
	}
}

// nodeProxyToken returns a token of a new ServiceAccount that RBAC lets read the kubelet's
// API (nodes/proxy), as a node agent's would.
func nodeProxyToken(t *testing.T, c *k8s.Cluster, ns string) string {
	t.Helper()
	sa := c.ServiceAccount(t, ns, "kubelet-reader")
	rbac := c.Client.RbacV1()
	role, err := rbac.ClusterRoles().Create(t.Context(), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: ns + "-kubelet-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = rbac.ClusterRoleBindings().Create(t.Context(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa.Name}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return c.Token(t, ns, sa.Name, nil, nil, 0)
}

// kubeletClient trusts only the kubelet's serving CA.
func kubeletClient(t *testing.T, n *node.Node) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM([]byte(readTrim(t, n.KubeletCAFile))))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

func get(t *testing.T, hc *http.Client, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// assertNothingLeft checks that a stopped node left nothing on the host: processes, mounts,
// cgroups, the bridge, the run dir, the ip_forward setting.
func assertNothingLeft(t *testing.T, n *node.Node, pids []int, ipForward string) {
	t.Helper()
	for _, pid := range pids {
		assert.False(t, alive(pid), "process %d still alive", pid)
	}
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	for _, f := range procs {
		cmd, _ := os.ReadFile(f)
		assert.NotContains(t, string(cmd), n.Dir, "process %s still uses the run dir", f)
	}
	mounts := readTrim(t, "/proc/self/mountinfo")
	assert.NotContains(t, mounts, n.Dir)
	assert.NotContains(t, mounts, " tally-node ", "a tmpfs of the node's mount namespace")
	_, err = net.InterfaceByName(n.Bridge)
	assert.Error(t, err, "bridge %s still there", n.Bridge)
	assert.NoDirExists(t, n.Dir)
	assert.NoDirExists(t, "/sys/fs/cgroup/memory"+n.CgroupRoot)
	assert.NoDirExists(t, "/sys/fs/cgroup/pids"+n.CgroupRoot)
	assert.Equal(t, ipForward, readTrim(t, "/proc/sys/net/ipv4/ip_forward"))
}

func waitPod(t *testing.T, c *k8s.Cluster, pod *corev1.Pod, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var cur *corev1.Pod
	poll(t, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		cur = p
		return ok(p), nil
	})
	return cur
}

// poll calls cond every 100 ms until it holds; it fails t after timeout.
func poll(t *testing.T, cond func(context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	require.NoError(t, wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, cond))
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}
