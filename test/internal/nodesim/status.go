package nodesim

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// HostIP is the node address the simulator reports in status.hostIP.
const HostIP = "127.0.0.1"

// ContainerIDPrefix prefixes container IDs in status.containerStatuses[].containerID.
const ContainerIDPrefix = "containerd://"

// podStatus is the status a kubelet would report for pod at now. It is a pure function of the
// pod spec and st, so /pods and the API agree.
func (n *Node) podStatus(pod *corev1.Pod, st *podState, now time.Time) corev1.PodStatus {
	seen := metav1.NewTime(st.seen.Truncate(time.Second))
	started := metav1.NewTime(st.started.Truncate(time.Second))
	s := corev1.PodStatus{
		QOSClass:  pod.Status.QOSClass,
		HostIP:    HostIP,
		HostIPs:   []corev1.HostIP{{IP: HostIP}},
		StartTime: &seen,
	}
	cond := func(typ corev1.PodConditionType, ok bool, at metav1.Time, reason string) corev1.PodCondition {
		c := corev1.PodCondition{Type: typ, Status: corev1.ConditionFalse, LastTransitionTime: at, Reason: reason}
		if ok {
			c.Status, c.Reason = corev1.ConditionTrue, ""
		}
		return c
	}

	if now.Before(st.started) {
		s.Phase = corev1.PodPending
		s.Conditions = []corev1.PodCondition{
			cond(corev1.PodReadyToStartContainers, false, seen, ""),
			cond(corev1.PodInitialized, len(pod.Spec.InitContainers) == 0, seen, "PodInitializing"),
			cond(corev1.PodReady, false, seen, "ContainersNotReady"),
			cond(corev1.ContainersReady, false, seen, "ContainersNotReady"),
			cond(corev1.PodScheduled, true, seen, ""),
		}
		waiting := func(cs []corev1.Container, reason string) []corev1.ContainerStatus {
			var out []corev1.ContainerStatus
			for _, c := range cs {
				f := false
				out = append(out, corev1.ContainerStatus{
					Name: c.Name, Image: c.Image, Started: &f,
					State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}},
				})
			}
			return out
		}
		s.InitContainerStatuses = waiting(pod.Spec.InitContainers, "PodInitializing")
		s.ContainerStatuses = waiting(pod.Spec.Containers, "ContainerCreating")
		return s
	}

	s.Phase = corev1.PodRunning
	s.PodIP = st.ip
	s.PodIPs = []corev1.PodIP{{IP: st.ip}}
	s.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, true, started, ""),
		cond(corev1.PodInitialized, true, started, ""),
		cond(corev1.PodReady, true, started, ""),
		cond(corev1.ContainersReady, true, started, ""),
		cond(corev1.PodScheduled, true, seen, ""),
	}
	for _, c := range pod.Spec.InitContainers {
		f := false
		s.InitContainerStatuses = append(s.InitContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), ContainerID: ContainerIDPrefix + st.ids[c.Name],
			Ready: true, Started: &f,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: seen, FinishedAt: started,
				ContainerID: ContainerIDPrefix + st.ids[c.Name],
			}},
		})
	}
	for _, c := range pod.Spec.Containers {
		tr := true
		s.ContainerStatuses = append(s.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), ContainerID: ContainerIDPrefix + st.ids[c.Name],
			Ready: true, Started: &tr,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
		})
	}
	return s
}

// imageID is a stable fake digest reference for image, shaped like containerd's
// "<repository>@sha256:<64 hex>".
func imageID(image string) string {
	repo := image
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	} else if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	sum := sha256.Sum256([]byte(image))
	return repo + "@sha256:" + hex.EncodeToString(sum[:])
}
