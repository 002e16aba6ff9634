package nodesim

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

const cgroupRoot = "/sys/fs/cgroup"

// hierarchy is one mounted cgroup hierarchy a container process is moved into.
type hierarchy struct {
	mount string // e.g. /sys/fs/cgroup/pids
	// controllers is the hierarchy's controller field in /proc/<pid>/cgroup: "pids",
	// "name=systemd", or "" for cgroup2.
	controllers string
}

// hierarchies returns the hierarchies a simulated container joins: on a pure cgroup2 host
// just /sys/fs/cgroup; on a v1/hybrid host the pids, name=systemd and cgroup2 (unified)
// hierarchies that are mounted. Never memory (nor cpu, cpuset, ...): moving a process there
// would take it out of the sandbox's resource accounting.
var hierarchies = sync.OnceValues(func() ([]hierarchy, error) {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return []hierarchy{{mount: cgroupRoot, controllers: ""}}, nil
	}
	var hs []hierarchy
	for _, h := range []hierarchy{
		{mount: filepath.Join(cgroupRoot, "pids"), controllers: "pids"},
		{mount: filepath.Join(cgroupRoot, "systemd"), controllers: "name=systemd"},
		{mount: filepath.Join(cgroupRoot, "unified"), controllers: ""},
	} {
		if _, err := os.Stat(filepath.Join(h.mount, "cgroup.procs")); err == nil {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return nil, errors.New("nodesim: no usable cgroup hierarchy under " + cgroupRoot)
	}
	return hs, nil
})

// cgMu serializes this process's cgroup directory creation and removal, so one container's
// cleanup never removes a parent another is being created under. (Other processes are
// handled by retrying.)
var cgMu sync.Mutex

// CgroupPath returns the cgroup path, relative to a hierarchy's root, that a kubelet with
// driver and containerd give container id of a pod with uid and QoS class qos.
func CgroupPath(driver CgroupDriver, qos corev1.PodQOSClass, uid types.UID, id string) string {
	if qos == "" {
		qos = corev1.PodQOSBestEffort // what the apiserver computes for a pod without resources
	}
	level := strings.ToLower(string(qos)) // besteffort, burstable; none for Guaranteed
	if qos == corev1.PodQOSGuaranteed {
		level = ""
	}
	if driver == Systemd {
		u := strings.ReplaceAll(string(uid), "-", "_")
		if level == "" {
			return path.Join("/kubepods.slice", "kubepods-pod"+u+".slice", "cri-containerd-"+id+".scope")
		}
		return path.Join("/kubepods.slice", "kubepods-"+level+".slice",
			"kubepods-"+level+"-pod"+u+".slice", "cri-containerd-"+id+".scope")
	}
	return path.Join("/kubepods", level, "pod"+string(uid), id)
}

// Container is a real process started as the simulated kubelet would start one container of a
// pod: in the container's cgroup from its first instruction.
type Container struct {
	// Name is the container's name in the pod spec; ID its container ID (64 hex, as in
	// status.containerStatuses[].containerID after "containerd://").
	Name, ID string
	// PodUID is the uid of the pod the container belongs to.
	PodUID types.UID
	// Cgroup is the container's cgroup path, e.g. /kubepods/besteffort/pod<uid>/<id>, as it
	// appears in /proc/<Pid>/cgroup for every hierarchy joined.
	Cgroup string
	// Pid is the process id (the wrapper execs the command, so it keeps this pid).
	Pid int
	// Cmd is the started command. Do not call Cmd.Wait; use Container.Wait.
	Cmd *exec.Cmd

	dirs     []string // the container's cgroup directory in each hierarchy
	mounts   []string
	done     chan struct{}
	err      error
	stopOnce sync.Once
	stopErr  error
}

// RunContainer starts `sleep 3600` as container of pod (see RunCommand).
func (n *Node) RunContainer(t testing.TB, pod *corev1.Pod, container string) *Container {
	t.Helper()
	return n.RunCommand(t, pod, container, exec.Command("sleep", "3600"))
}

// RunCommand starts cmd as container of pod, in the cgroup the node's kubelet would create for
// it (pids, name=systemd and cgroup2 hierarchies; see CgroupPath), with the container ID the
// simulator reports for it. It waits (up to 30 s) for the simulator to see the pod, but not for
// Options.StartDelay. Only cmd's Path, Args, Env, Dir, Stdin, Stdout and Stderr are used; cmd
// itself is not started. The process runs inside the cgroup from its first instruction: a
// /bin/sh wrapper is moved into the cgroup and verified through /proc/<pid>/cgroup before it
// execs cmd (same pid). It returns once the pid runs cmd (or has already exited). Requires
// root. The process (and anything it forked) is killed and the cgroup directories removed
// when the test ends, or earlier by Stop. Safe for concurrent use.
func (n *Node) RunCommand(t testing.TB, pod *corev1.Pod, container string, cmd *exec.Cmd) *Container {
	t.Helper()
	if cmd.Err != nil {
		t.Fatalf("nodesim: command: %v", cmd.Err)
	}
	hs, err := hierarchies()
	if err != nil {
		t.Fatal(err)
	}
	cur, st := n.waitPod(t, pod)
	id, ok := st.ids[container]
	if !ok {
		t.Fatalf("nodesim: pod %s/%s has no container %q", pod.Namespace, pod.Name, container)
	}
	c := &Container{
		Name:   container,
		ID:     id,
		PodUID: cur.UID,
		Cgroup: CgroupPath(n.opts.CgroupDriver, cur.Status.QOSClass, cur.UID, id),
		done:   make(chan struct{}),
	}
	for _, h := range hs {
		c.mounts = append(c.mounts, h.mount)
		c.dirs = append(c.dirs, filepath.Join(h.mount, c.Cgroup))
	}
	if err := c.start(cmd, hs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("nodesim: %v", err)
		}
	})
	return c
}

func (c *Container) start(cmd *exec.Cmd, hs []hierarchy) error {
	if err := c.mkdirs(); err != nil {
		_ = c.rmdirs()
		return err
	}
	gate, release, err := os.Pipe()
	if err != nil {
		_ = c.rmdirs()
		return fmt.Errorf("nodesim: pipe: %w", err)
	}
	defer release.Close()
	// fd 3 is the gate: the shell blocks until the parent has moved it into the cgroups, then
	// closes the gate and execs the command under the same pid.
	args := append([]string{"-c", gateScript, "nodesim-" + c.Name, cmd.Path}, cmd.Args[1:]...)
	w := exec.Command("/bin/sh", args...)
	w.Env, w.Dir = cmd.Env, cmd.Dir
	w.Stdin, w.Stdout, w.Stderr = cmd.Stdin, cmd.Stdout, cmd.Stderr
	w.ExtraFiles = []*os.File{gate}
	w.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = w.Start()
	gate.Close()
	if err != nil {
		_ = c.rmdirs()
		return fmt.Errorf("nodesim: start %s: %w", cmd.Path, err)
	}
	c.Cmd, c.Pid = w, w.Process.Pid
	go func() {
		c.err = w.Wait()
		close(c.done)
	}()
	if err := c.enter(hs); err != nil {
		_ = c.Stop()
		return err
	}
	if _, err := release.Write([]byte("go\n")); err != nil {
		_ = c.Stop()
		return fmt.Errorf("nodesim: release %s: %w", c.Name, err)
	}
	return c.awaitExec()
}

// gateScript blocks the wrapper shell on fd 3 until the parent releases it, then execs "$@".
const gateScript = `read -r go <&3; exec 3<&-; exec "$@"`

// awaitExec waits until the wrapper has exec'd the command (its cmdline no longer is the
// wrapper's and is not empty, as it is for a moment during execve) or has exited.
func (c *Container) awaitExec() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-c.done:
			return nil
		default:
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c.Pid))
		if err == nil && len(b) > 0 && !strings.Contains(string(b), gateScript) {
			return nil
		}
		if time.Now().After(deadline) {
			_ = c.Stop()
			return fmt.Errorf("nodesim: %s (pid %d) did not exec its command", c.Name, c.Pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// mkdirs creates the container's cgroup directories, retrying when another process removes a
// shared parent (kubepods, ...) in between.
func (c *Container) mkdirs() error {
	cgMu.Lock()
	defer cgMu.Unlock()
	for _, d := range c.dirs {
		var err error
		for range 20 {
			if err = os.MkdirAll(d, 0o755); err == nil || !errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("nodesim: create cgroup: %w", err)
		}
	}
	return nil
}

// enter moves the wrapper into every hierarchy's container cgroup and checks
// /proc/<pid>/cgroup.
func (c *Container) enter(hs []hierarchy) error {
	pid := strconv.Itoa(c.Pid)
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(pid), 0); err != nil {
			return fmt.Errorf("nodesim: move pid %d into %s: %w", c.Pid, d, err)
		}
	}
	got, err := ProcCgroups(c.Pid)
	if err != nil {
		return err
	}
	for _, h := range hs {
		if p, ok := got[h.controllers]; !ok || p != c.Cgroup {
			return fmt.Errorf("nodesim: pid %d: /proc cgroup for %q is %q, want %q", c.Pid, h.controllers, p, c.Cgroup)
		}
	}
	return nil
}

// ProcCgroups parses /proc/<pid>/cgroup into controller field -> path ("" is the cgroup2 line,
// "name=systemd" the systemd one).
func ProcCgroups(pid int) (map[string]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, fmt.Errorf("nodesim: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out, s.Err()
}

// Wait waits for the process to exit and returns its exit status (as exec.Cmd.Wait). Safe to
// call from several goroutines and more than once.
func (c *Container) Wait() error {
	<-c.done
	return c.err
}

// Stop kills the process, its process group and anything left in its cgroup, waits for it,
// then removes the cgroup directories leaf to root (parents shared with other containers stay
// until their last user leaves). Idempotent; the error reports directories that could not be
// removed.
func (c *Container) Stop() error {
	c.stopOnce.Do(func() {
		if c.Cmd != nil {
			_ = syscall.Kill(-c.Pid, syscall.SIGKILL)
			c.killCgroupMembers()
			<-c.done
		}
		c.stopErr = c.rmdirs()
	})
	return c.stopErr
}

// killCgroupMembers kills processes that left the process group but are still in the cgroup.
func (c *Container) killCgroupMembers() {
	for _, d := range c.dirs {
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// rmdirs removes each container cgroup (waiting up to 5 s for it to empty) and then its
// parents up to the hierarchy root, stopping at the first parent still in use.
func (c *Container) rmdirs() error {
	cgMu.Lock()
	defer cgMu.Unlock()
	var errs []error
	for i, d := range c.dirs {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
				break
			}
			c.killCgroupMembers()
			time.Sleep(20 * time.Millisecond)
		}
		for p := filepath.Dir(d); p != c.mounts[i] && strings.HasPrefix(p, c.mounts[i]+"/"); p = filepath.Dir(p) {
			if err := syscall.Rmdir(p); err != nil {
				break // still used by another pod or container (EBUSY), or already gone
			}
		}
	}
	return errors.Join(errs...)
}
