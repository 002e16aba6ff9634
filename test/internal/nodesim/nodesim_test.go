package nodesim_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/nodesim"
)

var containerIDRE = regexp.MustCompile(`^containerd://[0-9a-f]{64}$`)

// getPods calls the simulated kubelet's GET /pods with token ("" sends no Authorization).
func getPods(t *testing.T, n *nodesim.Node, token string) (int, *corev1.PodList) {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(n.CAPEM))
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, n.URL+"/pods", nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	var list corev1.PodList
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
	return resp.StatusCode, &list
}

func find(list *corev1.PodList, uid string) *corev1.Pod {
	for i := range list.Items {
		if string(list.Items[i].UID) == uid {
			return &list.Items[i]
		}
	}
	return nil
}

func waitRunning(t *testing.T, c *k8s.Cluster, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		p, err := c.Client.CoreV1().Pods(pod.Namespace).Get(t.Context(), pod.Name, metav1.GetOptions{})
		require.NoError(ct, err)
		require.Equal(ct, corev1.PodRunning, p.Status.Phase)
		got = p
	}, 30*time.Second, 50*time.Millisecond)
	return got
}

func TestNodeSim(t *testing.T) {
	c := k8s.Start(t)

	t.Run("marks pods Running with container statuses", func(t *testing.T) {
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-run-"+ns, nodesim.Options{})
		pod := c.Pod(t, ns, "web", "", n.Name, map[string]string{"app": "web"}, "app", "sidecar")
		other := c.Pod(t, ns, "elsewhere", "", "another-node", nil)

		p := waitRunning(t, c, pod)
		assert.Equal(t, corev1.PodQOSBestEffort, p.Status.QOSClass)
		assert.Equal(t, nodesim.HostIP, p.Status.HostIP)
		assert.Regexp(t, `^10\.\d+\.\d+\.\d+$`, p.Status.PodIP)
		require.Len(t, p.Status.ContainerStatuses, 2)
		for i, cs := range p.Status.ContainerStatuses {
			assert.Equal(t, pod.Spec.Containers[i].Name, cs.Name)
			assert.Equal(t, pod.Spec.Containers[i].Image, cs.Image)
			assert.Regexp(t, `@sha256:[0-9a-f]{64}$`, cs.ImageID)
			assert.Regexp(t, containerIDRE, cs.ContainerID)
			assert.Equal(t, nodesim.ContainerIDPrefix+n.ContainerID(t, pod, cs.Name), cs.ContainerID)
			assert.True(t, cs.Ready)
			assert.NotNil(t, cs.State.Running)
		}
		assert.NotEqual(t, p.Status.ContainerStatuses[0].ContainerID, p.Status.ContainerStatuses[1].ContainerID)

		o, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), other.Name, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, corev1.PodPending, o.Status.Phase, "pod of another node touched")
	})

	t.Run("GET /pods needs a valid bearer token", func(t *testing.T) {
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-pods-"+ns, nodesim.Options{})
		pod := c.Pod(t, ns, "web", "", n.Name, nil, "app")
		waitRunning(t, c, pod)
		agent := c.ServiceAccount(t, ns, "agent")

		code, _ := getPods(t, n, "")
		assert.Equal(t, http.StatusUnauthorized, code)
		code, _ = getPods(t, n, "not-a-token")
		assert.Equal(t, http.StatusUnauthorized, code)
		code, _ = getPods(t, n, c.Token(t, ns, agent.Name, []string{"tally-server"}, nil, 0))
		assert.Equal(t, http.StatusUnauthorized, code, "kubelet reviews with the apiserver's audiences")

		code, list := getPods(t, n, c.Token(t, ns, agent.Name, nil, nil, 0))
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, "PodList", list.Kind)
		got := find(list, string(pod.UID))
		require.NotNil(t, got, "pod missing from /pods")
		assert.Equal(t, n.Name, got.Spec.NodeName)
		assert.Equal(t, corev1.PodRunning, got.Status.Phase)
		require.Len(t, got.Status.ContainerStatuses, 1)
		assert.Equal(t, nodesim.ContainerIDPrefix+n.ContainerID(t, pod, "app"), got.Status.ContainerStatuses[0].ContainerID)
		assert.GreaterOrEqual(t, n.PodsRequests(), 1)
	})

	t.Run("Authorize requires get nodes/proxy", func(t *testing.T) {
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-authz-"+ns, nodesim.Options{Authorize: true, AuthCacheTTL: -1})
		agent := c.ServiceAccount(t, ns, "agent")
		token := c.Token(t, ns, agent.Name, nil, nil, 0)
		code, _ := getPods(t, n, token)
		assert.Equal(t, http.StatusForbidden, code)

		role := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "kubelet-reader-" + ns},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"get"}}},
		}
		_, err := c.Client.RbacV1().ClusterRoles().Create(t.Context(), role, metav1.CreateOptions{})
		require.NoError(t, err)
		_, err = c.Client.RbacV1().ClusterRoleBindings().Create(t.Context(), &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role.Name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: agent.Name}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		assert.EventuallyWithT(t, func(ct *assert.CollectT) {
			code, _ := getPods(t, n, token)
			assert.Equal(ct, http.StatusOK, code)
		}, 10*time.Second, 100*time.Millisecond)
	})

	t.Run("StartDelay hides new containers from /pods for a while", func(t *testing.T) {
		const delay = 3 * time.Second
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-delay-"+ns, nodesim.Options{StartDelay: delay})
		token := c.Token(t, ns, c.ServiceAccount(t, ns, "agent").Name, nil, nil, 0)
		created := time.Now()
		pod := c.Pod(t, ns, "slow", "", n.Name, nil, "app")
		ctr := n.RunContainer(t, pod, "app") // works before the container is reported

		code, list := getPods(t, n, token)
		require.Equal(t, http.StatusOK, code)
		if time.Since(created) < delay { // the answer was computed before the delay ran out
			if got := find(list, string(pod.UID)); got != nil {
				assert.Equal(t, corev1.PodPending, got.Status.Phase)
				require.Len(t, got.Status.ContainerStatuses, 1)
				assert.Empty(t, got.Status.ContainerStatuses[0].ContainerID)
				assert.Equal(t, "ContainerCreating", got.Status.ContainerStatuses[0].State.Waiting.Reason)
			}
		} else {
			t.Logf("machine too slow to observe the delay (%s)", time.Since(created))
		}
		assert.EventuallyWithT(t, func(ct *assert.CollectT) {
			_, list := getPods(t, n, token)
			got := find(list, string(pod.UID))
			require.NotNil(ct, got)
			require.Len(ct, got.Status.ContainerStatuses, 1)
			assert.Equal(ct, nodesim.ContainerIDPrefix+ctr.ID, got.Status.ContainerStatuses[0].ContainerID)
		}, 30*time.Second, 100*time.Millisecond)
		waitRunning(t, c, pod)
	})

	t.Run("two pods can claim one container ID", func(t *testing.T) {
		const shared = "5ba7ed5ba7ed5ba7ed5ba7ed5ba7ed5ba7ed5ba7ed5ba7ed5ba7ed5ba7ed5ba7"
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-dup-"+ns, nodesim.Options{
			ContainerID: func(pod *corev1.Pod, container string) string {
				if pod.Labels["dup"] == "yes" {
					return shared
				}
				return ""
			},
		})
		a := c.Pod(t, ns, "a", "", n.Name, map[string]string{"dup": "yes"})
		b := c.Pod(t, ns, "b", "", n.Name, map[string]string{"dup": "yes"})
		d := c.Pod(t, ns, "d", "", n.Name, nil)
		for _, p := range []*corev1.Pod{a, b, d} {
			waitRunning(t, c, p)
		}
		_, list := getPods(t, n, c.Token(t, ns, c.ServiceAccount(t, ns, "agent").Name, nil, nil, 0))
		require.NotNil(t, list)
		for _, p := range []*corev1.Pod{a, b} {
			got := find(list, string(p.UID))
			require.NotNil(t, got)
			assert.Equal(t, nodesim.ContainerIDPrefix+shared, got.Status.ContainerStatuses[0].ContainerID)
		}
		got := find(list, string(d.UID))
		require.NotNil(t, got)
		assert.NotEqual(t, nodesim.ContainerIDPrefix+shared, got.Status.ContainerStatuses[0].ContainerID)
	})

	t.Run("graceful delete is confirmed like a kubelet", func(t *testing.T) {
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-del-"+ns, nodesim.Options{})
		pod := c.Pod(t, ns, "bye", "", n.Name, nil)
		waitRunning(t, c, pod)
		require.NoError(t, c.Client.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}))
		assert.EventuallyWithT(t, func(ct *assert.CollectT) {
			_, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
			assert.True(ct, apierrors.IsNotFound(err))
		}, 30*time.Second, 50*time.Millisecond)
	})

	t.Run("containers run in kubelet cgroups", func(t *testing.T) {
		requireRoot(t)
		guaranteed := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
		burstable := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}
		for _, tc := range []struct {
			name      string
			driver    nodesim.CgroupDriver
			resources corev1.ResourceRequirements
			qos       corev1.PodQOSClass
			want      func(uid, id string) string
		}{
			{"cgroupfs besteffort", nodesim.Cgroupfs, corev1.ResourceRequirements{}, corev1.PodQOSBestEffort,
				func(uid, id string) string { return "/kubepods/besteffort/pod" + uid + "/" + id }},
			{"cgroupfs burstable", nodesim.Cgroupfs, corev1.ResourceRequirements{Requests: burstable}, corev1.PodQOSBurstable,
				func(uid, id string) string { return "/kubepods/burstable/pod" + uid + "/" + id }},
			{"cgroupfs guaranteed", nodesim.Cgroupfs, corev1.ResourceRequirements{Requests: guaranteed, Limits: guaranteed}, corev1.PodQOSGuaranteed,
				func(uid, id string) string { return "/kubepods/pod" + uid + "/" + id }},
			{"systemd besteffort", nodesim.Systemd, corev1.ResourceRequirements{}, corev1.PodQOSBestEffort,
				func(uid, id string) string {
					u := strings.ReplaceAll(uid, "-", "_")
					return "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + u + ".slice/cri-containerd-" + id + ".scope"
				}},
			{"systemd guaranteed", nodesim.Systemd, corev1.ResourceRequirements{Requests: guaranteed, Limits: guaranteed}, corev1.PodQOSGuaranteed,
				func(uid, id string) string {
					return "/kubepods.slice/kubepods-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + id + ".scope"
				}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ns := c.Namespace(t)
				n := nodesim.Start(t, c, "node-cg-"+ns, nodesim.Options{CgroupDriver: tc.driver})
				pod := c.CreatePod(t, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "w"},
					Spec: corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{
						{Name: "app", Image: k8s.Image("app"), Resources: tc.resources},
					}},
				})
				require.Equal(t, tc.qos, pod.Status.QOSClass)
				self, err := nodesim.ProcCgroups(os.Getpid())
				require.NoError(t, err)

				var ctr *nodesim.Container
				t.Run("run", func(t *testing.T) {
					ctr = n.RunContainer(t, pod, "app")
					want := tc.want(string(pod.UID), ctr.ID)
					assert.Equal(t, want, ctr.Cgroup)
					assert.Equal(t, n.ContainerID(t, pod, "app"), ctr.ID)
					got, err := nodesim.ProcCgroups(ctr.Pid)
					require.NoError(t, err)
					assert.Equal(t, want, got[""], "cgroup2 line")
					assert.Equal(t, want, got["pids"])
					assert.Equal(t, want, got["name=systemd"])
					assert.Equal(t, self["memory"], got["memory"], "memory hierarchy must not be touched")
					cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(ctr.Pid), "cmdline"))
					require.NoError(t, err)
					assert.Contains(t, string(cmdline), "sleep")
				})
				// the inner test's cleanup killed the process and removed its cgroups
				require.NotNil(t, ctr)
				assert.ErrorContains(t, ctr.Wait(), "killed")
				for _, h := range []string{"pids", "systemd", "unified"} {
					leaf := filepath.Join("/sys/fs/cgroup", h, ctr.Cgroup)
					assert.NoDirExists(t, leaf)
					assert.NoDirExists(t, filepath.Dir(leaf), "pod-level cgroup left behind")
				}
			})
		}
	})

	t.Run("RunCommand is in the cgroup from its first instruction", func(t *testing.T) {
		requireRoot(t)
		ns := c.Namespace(t)
		n := nodesim.Start(t, c, "node-cmd-"+ns, nodesim.Options{})
		pod := c.Pod(t, ns, "w", "", n.Name, nil, "app")
		var out bytes.Buffer
		cmd := exec.Command("/bin/sh", "-c", `cat /proc/self/cgroup; echo "pid=$$ greeting=$GREETING"`)
		cmd.Env = []string{"GREETING=hello"}
		cmd.Stdout = &out
		ctr := n.RunCommand(t, pod, "app", cmd)
		require.NoError(t, ctr.Wait())
		assert.Contains(t, out.String(), "0::"+ctr.Cgroup+"\n")
		assert.Contains(t, out.String(), ":pids:"+ctr.Cgroup+"\n")
		assert.Contains(t, out.String(), "pid="+strconv.Itoa(ctr.Pid)+" greeting=hello")
		require.NoError(t, ctr.Stop())
		assert.NoDirExists(t, filepath.Join("/sys/fs/cgroup/unified", ctr.Cgroup))
	})
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("cgroup tests need root (they create cgroups like a kubelet)")
	}
}
