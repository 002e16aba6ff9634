package k8s

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest"
)

func TestReadCgroupLayouts(t *testing.T) {
	tests := []struct {
		name string
		pid  int32 // testdata/proc/<pid>/cgroup
		want cgroupIDs
	}{
		// In a pod.
		{name: "containerd, cgroup v2, systemd driver, burstable", pid: 101, want: cgroupIDs{uidBurstable, cid("101")}},
		{name: "containerd, cgroup v2, systemd driver, besteffort", pid: 102, want: cgroupIDs{uidBestEffort, cid("102")}},
		{name: "containerd, cgroup v2, systemd driver, guaranteed", pid: 103, want: cgroupIDs{uidGuaranteed, cid("103")}},
		{name: "containerd, cgroup v1, cgroupfs driver, besteffort", pid: 104, want: cgroupIDs{uidBestEffort, cid("104")}},
		{name: "containerd, cgroup v1, cgroupfs driver, guaranteed (no QoS level)", pid: 105, want: cgroupIDs{uidGuaranteed, cid("105")}},
		{name: "CRI-O, cgroup v2, systemd driver", pid: 106, want: cgroupIDs{uidBurstable, cid("106")}},
		{name: "CRI-O, cgroup v2, crun's container sub-cgroup", pid: 107, want: cgroupIDs{uidBestEffort, cid("107")}},
		{name: "CRI-O, cgroup v1, cgroupfs driver", pid: 108, want: cgroupIDs{uidBurstable, cid("108")}},
		{name: "docker (cri-dockerd), cgroup v1 hybrid, systemd driver", pid: 109, want: cgroupIDs{uidBurstable, cid("109")}},
		{name: "docker (cri-dockerd), cgroup v1, cgroupfs driver", pid: 110, want: cgroupIDs{uidBurstable, cid("110")}},
		{name: "kind on cgroup v1: /docker/<node>/kubepods/...", pid: 111, want: cgroupIDs{uidBestEffort, cid("111")}},
		{name: "kind, cgroupfs under /kubelet", pid: 112, want: cgroupIDs{uidBurstable, cid("112")}},
		{name: "kind, cgroup v2, systemd under kubelet.slice", pid: 113, want: cgroupIDs{uidBestEffort, cid("113")}},
		{name: "seen from a cgroup namespace, systemd driver", pid: 114, want: cgroupIDs{uidBestEffort, cid("114")}},
		{name: "seen from a cgroup namespace, cgroupfs driver", pid: 115, want: cgroupIDs{uidBurstable, cid("115")}},
		{name: "static pod (32 hex digit UID)", pid: 116, want: cgroupIDs{uidStatic, cid("116")}},
		{name: "docker-in-docker inside a pod container: the pod's container", pid: 117, want: cgroupIDs{uidBurstable, cid("117")}},
		{name: "kind node inside a pod: the inner pod", pid: 118, want: cgroupIDs{uidBestEffort, cid("118")}},

		// In no pod.
		{name: "host service, cgroup v2", pid: 120},
		{name: "plain docker container, cgroup v1", pid: 121},
		{name: "plain docker container, cgroup v2", pid: 122},
		{name: "user session, cgroup v1", pid: 123},
		{name: "pod-like cgroup outside the kubelet's tree", pid: 124},
		{name: "root cgroup", pid: 125},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readCgroup(fixtureRoot, tt.pid)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestReadCgroupRefusals(t *testing.T) {
	tests := []struct {
		name      string
		pid       int32
		ambiguous bool
		denied    bool
		msg       string
	}{
		{name: "v1 lines name two pods", pid: 130, ambiguous: true, msg: "pods " + uidBestEffort + " and " + uidOther},
		{name: "v1 lines name two containers", pid: 131, ambiguous: true, msg: "containers " + cid("104") + " and " + cid("130")},
		{name: "in a pod, in no container of it (conmon)", pid: 132, msg: "in pod " + uidBestEffort + " but in none of its containers"},
		{name: "malformed line", pid: 133, msg: `malformed line "not a cgroup line"`},
		{name: "no such process", pid: 999999, denied: true, msg: "no process 999999"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readCgroup(fixtureRoot, tt.pid)
			require.Error(t, err)
			assert.Equal(t, tt.ambiguous, errors.Is(err, ErrAmbiguous), err)
			assert.Equal(t, tt.denied, errors.Is(err, attest.ErrDenied), err)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}

// TestReadCgroupRealProcess reads this test process's own cgroups: it runs
// in no pod here, so they name none.
func TestReadCgroupRealProcess(t *testing.T) {
	b, err := os.ReadFile("/proc/self/cgroup")
	require.NoError(t, err)
	require.NotContains(t, string(b), "kubepods", "these tests run on a host (make test), not inside a pod")
	got, err := readCgroup("/proc", int32(os.Getpid()))
	require.NoError(t, err)
	assert.Equal(t, cgroupIDs{}, got)
}
