// Package node runs a real Kubernetes node for tests: a kubelet, kube-scheduler and
// kube-controller-manager (built from the Go module proxy by scripts/node/build.sh) and a
// private containerd (Debian's), started by scripts/node/up.sh against a control plane of
// test/internal/k8s, and stopped by scripts/node/down.sh, which undoes every host change.
//
// Pods really run: in containerd, in cgroups under the test's own cgroup, with the CNI bridge
// plugin for pod networking. Nothing can be pulled, so every image is a tarball imported into
// containerd (Options.Images, Node.ImportImages; BuildImage makes one from a Go program) and
// pods must use imagePullPolicy Never or IfNotPresent. The sandbox image (PauseImage) is built
// and imported by Start.
//
// One node at a time per machine: fixed ports (kubelet 10250/10248, controller-manager 10257,
// scheduler 10259), bridge tally-node0 and pod CIDR 10.244.250.0/24, overridable through
// Options.Env (see scripts/node/up.sh). Start waits on a machine-wide lock for a node of
// another test process to stop. The node's name is "localhost": the apiserver reaches the
// kubelet (pod logs, exec) at the node's hostname, and the kubelet listens on 127.0.0.1 only.
//
// Needs root, and the Debian packages containerd (with runc) and containernetworking-plugins;
// tests are skipped only when not root.
package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tallyid/tally/test/internal/k8s"
	"github.com/tallyid/tally/test/internal/repo"
)

// readyTimeout bounds the wait for the Node object's Ready condition once up.sh returned
// (up.sh itself already waited for it, up to 180 s).
const readyTimeout = time.Minute

// Options adjusts a node. The zero value is a node with only the pause image.
type Options struct {
	// Images are image tarballs (docker-save or OCI tarballs, e.g. from BuildImage or
	// go-containerregistry's tarball.WriteToFile) imported into containerd's k8s.io
	// namespace before the kubelet starts.
	Images []string
	// Env is added to scripts/node/up.sh's environment, e.g. "KUBELET_V=4" or
	// "KUBELET_PORT=11250" (see the script for every variable).
	Env []string
}

// Node is a running node. Its fields are read-only.
type Node struct {
	// Name is the node's name (and its kubelet's hostname), "localhost" by default.
	Name string
	// KubeletURL is the kubelet's HTTPS API, https://127.0.0.1:PORT (/pods, /healthz, ...).
	// It authenticates client certificates of the cluster CA and bearer tokens (TokenReview),
	// and authorizes by SubjectAccessReview (e.g. nodes/proxy for /pods); anonymous: 401.
	KubeletURL string
	// KubeletCAFile is the PEM file of the CA that signed the kubelet's serving certificate
	// (the cluster CA; SANs 127.0.0.1, localhost and Name).
	KubeletCAFile string
	// NodeCertFile and NodeKeyFile are the kubelet's own client certificate
	// (system:node:NAME, group system:nodes): what the Node authorizer grants.
	NodeCertFile, NodeKeyFile string
	// ContainerdSocket is the private containerd's socket (ctr -a SOCKET -n k8s.io ...; ctr run
	// and volume contents need the mount namespace: nsenter -m -t NamespacePID).
	ContainerdSocket string
	// NamespacePID holds the private mount namespace of containerd, the kubelet and the pods'
	// mounts (tmpfs on /run/containerd, /var/lib/kubelet, /var/log/containers; volumes).
	NamespacePID int
	// KubeletPID, ContainerdPID, SchedulerPID and ControllerManagerPID are the daemons.
	KubeletPID, ContainerdPID, SchedulerPID, ControllerManagerPID int
	// CgroupRoot is the kubelet's cgroupRoot (the same path in every cgroup hierarchy);
	// pods live under CgroupRoot/kubepods/.
	CgroupRoot string
	// Bridge and PodCIDR are the CNI bridge and the pods' addresses.
	Bridge, PodCIDR string
	// Dir is the run directory (PKI, containerd's root and state, kubelet dirs, pod logs);
	// LogDir holds the daemons' logs. Both are removed by Stop.
	Dir, LogDir string

	cluster *k8s.Cluster
	root    string // the repository, for the scripts
	lock    *machineLock

	mu      sync.Mutex
	stopped bool
	stopErr error
}

// Start builds the binaries if needed (Binaries), builds the pause image, starts a node
// against c (which must have been started with k8s.Options{Kubelet: true}), waits until the
// Node is Ready and the scheduler and controller-manager are healthy (typically 2–3 s; fails
// the test after ~3 min), and stops the node in t.Cleanup, printing its logs' tails if the
// test failed. It is skipped, as every test needing a node, when not run as root.
func Start(t testing.TB, c *k8s.Cluster, opts Options) *Node {
	t.Helper()
	requireRoot(t)
	n, err := start(c, opts, t.Logf)
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	t.Cleanup(func() { n.Stop(t) })
	return n
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("node: a real kubelet and containerd need root")
	}
}

func start(c *k8s.Cluster, opts Options, logf func(string, ...any)) (*Node, error) {
	if !c.Kubelet {
		return nil, fmt.Errorf("the cluster was not started with k8s.Options{Kubelet: true}: the apiserver would refuse the kubelet")
	}
	root, err := repo.Root()
	if err != nil {
		return nil, err
	}
	bin, err := buildBinaries(root)
	if err != nil {
		return nil, err
	}
	down := func(dir string) error {
		_, err := runScript(root, nil, filepath.Join(root, "scripts", "node", "down.sh"), dir)
		return err
	}
	lock, err := acquireLock(logf, down)
	if err != nil {
		return nil, err
	}
	n := &Node{cluster: c, root: root, lock: lock}
	if err := n.up(bin, opts, logf); err != nil {
		if stopErr := n.stop(); stopErr != nil {
			err = fmt.Errorf("%w (and stopping: %v)", err, stopErr)
		}
		return nil, err
	}
	return n, nil
}

// up builds the pause image, runs up.sh and waits for the Node to be Ready.
func (n *Node) up(bin string, opts Options, logf func(string, ...any)) error {
	t0 := time.Now()
	// rebuilt every time (go build's cache makes that cheap), into the binaries' cache dir:
	// under the machine lock, so no other node is reading it, and nothing to clean up
	pause, err := buildImage(n.root, bin, PausePackage, PauseImage)
	if err != nil {
		return err
	}
	// not under t.TempDir(): containerd's socket path must stay short (sun_path), and the run
	// dir's name names the node's cgroup
	if n.Dir, err = os.MkdirTemp("", "tally-node-"); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if err := n.lock.record(n.Dir); err != nil {
		return err
	}
	env := append([]string{
		"K8S_API_URL=" + n.cluster.URL,
		"K8S_CA_FILE=" + n.cluster.CAFile,
		"K8S_CA_KEY=" + n.cluster.CAKeyFile,
		"K8S_KUBECONFIG=" + n.cluster.Kubeconfig,
		"K8S_SA_KEY=" + n.cluster.SAKeyFile,
		// pinned: the caller's environment may name its own node (a CI pod's NODE_NAME), and
		// the apiserver reaches the kubelet only through a name that resolves to 127.0.0.1
		"NODE_NAME=localhost",
		"PAUSE_TAR=" + pause,
		"PAUSE_IMAGE=" + PauseImage,
		"NODE_IMAGES=" + strings.Join(opts.Images, " "),
	}, opts.Env...)
	t1 := time.Now()
	out, err := runScript(n.root, env, filepath.Join(n.root, "scripts", "node", "up.sh"), bin, n.Dir)
	if err != nil {
		return err
	}
	if err := n.parseEnv(out); err != nil {
		return err
	}
	if err := n.waitReady(t1); err != nil {
		return err
	}
	logf("node: %s Ready in %s (up.sh %s), kubelet %s", n.Name,
		time.Since(t0).Round(10*time.Millisecond), time.Since(t1).Round(10*time.Millisecond), n.KubeletURL)
	return nil
}

// parseEnv reads up.sh's `export NAME=VALUE` lines.
func (n *Node) parseEnv(out string) error {
	vars := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
			vars[k] = v
		}
	}
	pid := func(k string) int { p, _ := strconv.Atoi(vars[k]); return p }
	n.Name, n.KubeletURL, n.KubeletCAFile = vars["NODE_NAME"], vars["KUBELET_URL"], vars["KUBELET_CA_FILE"]
	n.NodeCertFile, n.NodeKeyFile = vars["KUBELET_NODE_CERT"], vars["KUBELET_NODE_KEY"]
	n.ContainerdSocket, n.CgroupRoot = vars["CONTAINERD_ADDRESS"], vars["NODE_CGROUP_ROOT"]
	n.Bridge, n.PodCIDR, n.LogDir = vars["CNI_BRIDGE"], vars["POD_CIDR"], vars["NODE_LOG_DIR"]
	n.NamespacePID, n.KubeletPID, n.ContainerdPID = pid("NODE_NS_PID"), pid("KUBELET_PID"), pid("CONTAINERD_PID")
	n.SchedulerPID, n.ControllerManagerPID = pid("KUBE_SCHEDULER_PID"), pid("KUBE_CONTROLLER_MANAGER_PID")
	if n.Name == "" || n.KubeletURL == "" || n.ContainerdSocket == "" || n.KubeletPID == 0 || n.NamespacePID == 0 {
		return fmt.Errorf("up.sh printed no complete node description:\n%s", out)
	}
	return nil
}

// waitReady waits for a Ready condition posted since the node started: a Node object of the
// same name may be left, still Ready, by an earlier node of the cluster.
func (n *Node) waitReady(since time.Time) error {
	since = since.Truncate(time.Second) // heartbeats have a resolution of a second
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		node, err := n.cluster.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			last = err
			return false, nil
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Errorf("Ready=%s at %s: %s", c.Status, c.LastHeartbeatTime, c.Message)
				return c.Status == corev1.ConditionTrue && !c.LastHeartbeatTime.Time.Before(since), nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready after %s: %v\n%s", n.Name, readyTimeout, last, n.LogTails(15))
	}
	return nil
}

// Stop stops the node and undoes its host changes (scripts/node/down.sh): afterwards no
// process, mount, cgroup, bridge or sysctl change of it is left, and Dir is gone. If t has
// failed, it first logs the tails of the daemons' logs. A failure to clean up fails t.
// Idempotent; Start registers it in t.Cleanup.
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	stopped := n.stopped
	n.mu.Unlock()
	if !stopped && t.Failed() {
		t.Logf("node: log tails (%s):\n%s", n.LogDir, n.LogTails(20))
	}
	if err := n.stop(); err != nil {
		t.Errorf("node: stop: %v", err)
	}
}

// stop runs down.sh once and releases the machine lock.
func (n *Node) stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return n.stopErr
	}
	n.stopped = true
	if n.Dir != "" {
		_, n.stopErr = runScript(n.root, nil, filepath.Join(n.root, "scripts", "node", "down.sh"), n.Dir)
	}
	if n.stopErr == nil {
		n.lock.release()
	} else {
		// keep the lock's record: the next Start runs down.sh on Dir again
		_ = n.lock.f.Close()
	}
	return n.stopErr
}

// LogTails returns the last lines of every daemon log (kubelet, containerd, scheduler,
// controller-manager), for failure messages.
func (n *Node) LogTails(lines int) string {
	files, _ := filepath.Glob(filepath.Join(n.LogDir, "*.log"))
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(f), repo.Tail(string(data), lines))
	}
	return b.String()
}

// ImportImages imports image tarballs (see Options.Images) into the running containerd.
func (n *Node) ImportImages(t testing.TB, tarballs ...string) {
	t.Helper()
	for _, tb := range tarballs {
		if _, err := n.ctr("images", "import", tb); err != nil {
			t.Fatalf("node: %v", err)
		}
	}
}

// RunningContainers returns the containers containerd runs for pods (pause containers
// included), by container ID (the hex of a pod status's containerd://ID) to host PID.
func (n *Node) RunningContainers(t testing.TB) map[string]int {
	t.Helper()
	out, err := n.ctr("tasks", "ls")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	running := map[string]int{}
	for _, line := range strings.Split(out, "\n")[1:] { // TASK PID STATUS, after a header
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "RUNNING" {
			if pid, err := strconv.Atoi(f[1]); err == nil {
				running[f[0]] = pid
			}
		}
	}
	return running
}

// ctr runs containerd's CLI against the node's containerd, in the kubelet's namespace.
func (n *Node) ctr(args ...string) (string, error) {
	cmd := exec.Command("ctr", append([]string{"-a", n.ContainerdSocket, "-n", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
