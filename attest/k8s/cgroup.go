package k8s

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/tallyid/tally/attest"
)

// cgroupIDs is what the cgroup paths of a process say about it.
type cgroupIDs struct {
	// PodUID is the UID of the pod the process runs in, with dashes (a UUID
	// for an API pod, 32 hex digits for a static pod); "" if it is not in a
	// pod.
	PodUID string
	// ContainerID is the runtime's ID of the pod's container the process
	// runs in (64 hex digits, no "<runtime>://" prefix). Set if PodUID is.
	ContainerID string
}

var (
	// podSegment is a pod's cgroup: "pod<uid>" (cgroupfs driver) or
	// "<parent>-pod<uid_with_underscores>.slice" (systemd driver, where the
	// parent is kubepods[-<qos>] or, under a kubelet cgroup root, e.g.
	// kubelet-kubepods-<qos>). A static pod's UID is 32 hex digits.
	podSegment = regexp.MustCompile(`^(?:[a-z0-9]+(?:-[a-z0-9]+)*-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})(?:\.slice)?$`)
	// containerSegment is a container's cgroup directly under its pod's:
	// "<id>" (containerd, docker and CRI-O with cgroupfs; CRI-O names it
	// "crio-<id>") or "<runtime>-<id>.scope" (systemd driver: cri-containerd,
	// crio, docker). The sandbox's own conmon ("crio-conmon-<id>.scope") is
	// not a container.
	containerSegment = regexp.MustCompile(`^(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$`)
)

// readCgroup reads <procRoot>/<pid>/cgroup and returns the pod and container
// it names. If pid names no process the error wraps attest.ErrDenied.
func readCgroup(procRoot string, pid int32) (cgroupIDs, error) {
	name := filepath.Join(procRoot, strconv.Itoa(int(pid)), "cgroup")
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return cgroupIDs{}, fmt.Errorf("%w: k8s: no process %d", attest.ErrDenied, pid)
	}
	if err != nil {
		return cgroupIDs{}, fmt.Errorf("k8s: %w", err)
	}
	ids, err := parseCgroup(b)
	if err != nil {
		return cgroupIDs{}, fmt.Errorf("k8s: %s: %w", name, err)
	}
	return ids, nil
}

// parseCgroup parses a cgroup(7) /proc/<pid>/cgroup file: cgroup v1 lines
// "N:controllers:path", the v2 line "0::path", or both (hybrid). Lines whose
// path is in no pod (v1 controllers the kubelet does not use, the hybrid
// unified line, a host process) say nothing. The pod lines must agree on one
// pod UID and one container ID, else the error wraps ErrAmbiguous. A pod
// without a container (a process left in the pod's own cgroup, CRI-O's
// conmon) is an error: the process is in a pod but is no workload of it.
func parseCgroup(b []byte) (cgroupIDs, error) {
	var ids cgroupIDs
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		_, rest, ok1 := strings.Cut(line, ":")
		_, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return cgroupIDs{}, fmt.Errorf("malformed line %q", line)
		}
		uid, cid := parsePath(path)
		if uid == "" {
			continue
		}
		if ids.PodUID != "" && ids.PodUID != uid {
			return cgroupIDs{}, fmt.Errorf("%w: cgroups name pods %s and %s", ErrAmbiguous, ids.PodUID, uid)
		}
		ids.PodUID = uid
		if cid == "" {
			continue
		}
		if ids.ContainerID != "" && ids.ContainerID != cid {
			return cgroupIDs{}, fmt.Errorf("%w: cgroups name containers %s and %s", ErrAmbiguous, ids.ContainerID, cid)
		}
		ids.ContainerID = cid
	}
	if err := sc.Err(); err != nil {
		return cgroupIDs{}, err
	}
	if ids.PodUID != "" && ids.ContainerID == "" {
		return cgroupIDs{}, fmt.Errorf("in pod %s but in none of its containers", ids.PodUID)
	}
	return ids, nil
}

// parsePath returns the pod UID and container ID a cgroup path names, or ""
// for a path in no pod. The pod is the innermost segment that looks like a
// pod's cgroup and hangs from the kubelet's tree: its ancestors up to the
// kubelet's root ("kubepods", "kubepods.slice", "kubelet-kubepods.slice")
// are QoS classes. What is above that root is free (a kind node's
// "/kubelet", "/kubelet.slice" or "/docker/<id>"). Paths seen from inside a
// cgroup namespace start with ".." and may begin below the kubelet's root;
// then the segments above the pod may also be only QoS classes. The
// container is the segment right under the pod; a process in a sub-cgroup
// of it (CRI-O's "crio-<id>.scope/container", docker-in-docker) is still in
// that container.
func parsePath(path string) (podUID, containerID string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	relative := false
	for len(segs) > 0 && segs[0] == ".." {
		segs, relative = segs[1:], true
	}
	for i := len(segs) - 1; i >= 0; i-- {
		// Cheap test first: "pod" and 32 hex digits at least.
		if len(segs[i]) < 35 || !strings.Contains(segs[i], "pod") {
			continue
		}
		m := podSegment.FindStringSubmatch(segs[i])
		if m == nil || !underKubelet(segs[:i], relative) {
			continue
		}
		podUID = strings.ReplaceAll(m[1], "_", "-")
		if i+1 < len(segs) {
			if c := containerSegment.FindStringSubmatch(segs[i+1]); c != nil {
				containerID = c[1]
			}
		}
		return podUID, containerID
	}
	return "", ""
}

// underKubelet reports whether a pod cgroup whose ancestors are above hangs
// from the kubelet's tree (see parsePath).
func underKubelet(above []string, relative bool) bool {
	root := false
	i := len(above) - 1
	for ; i >= 0 && isKubepods(above[i]); i-- {
		if strings.Contains(above[i], "kubepods") {
			root = true
		}
	}
	return root || (relative && i < 0)
}

// isKubepods reports whether seg is the kubelet's pod root or one of its
// QoS classes, in either driver's naming.
func isKubepods(seg string) bool {
	switch seg {
	case "kubepods", "besteffort", "burstable":
		return true
	}
	return strings.HasSuffix(seg, ".slice") && strings.Contains(seg, "kubepods") && !strings.Contains(seg, "-pod")
}
