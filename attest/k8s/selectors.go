package k8s

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/tallyid/tally/attest"
)

// mirrorAnnotation holds, on the API server's mirror of a static pod, the
// UID the kubelet gave the static pod (and that its cgroups carry).
const mirrorAnnotation = "kubernetes.io/config.mirror"

// stripRuntime turns a container status's "<runtime>://<id>" into "<id>".
func stripRuntime(containerID string) string {
	if _, id, ok := strings.Cut(containerID, "://"); ok {
		return id
	}
	return containerID
}

// containerIDs calls f with the ID of each container, init container and
// ephemeral container that pod's status lists (a container not started yet
// has none).
func containerIDs(pod *corev1.Pod, f func(id string)) {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for i := range list {
			if id := stripRuntime(list[i].ContainerID); id != "" {
				f(id)
			}
		}
	}
}

// containerStatus returns the status of pod's container (init and ephemeral
// containers included) whose current ID is id, or nil.
func containerStatus(pod *corev1.Pod, id string) *corev1.ContainerStatus {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for i := range list {
			if stripRuntime(list[i].ContainerID) == id {
				return &list[i]
			}
		}
	}
	return nil
}

// podUIDs returns the UIDs a pod's cgroups may carry: its own, and for the
// API server's mirror of a static pod the kubelet's UID of the static pod.
func podUIDs(pod *corev1.Pod) []string {
	uids := []string{string(pod.UID)}
	if m := pod.Annotations[mirrorAnnotation]; m != "" && m != string(pod.UID) {
		uids = append(uids, m)
	}
	return uids
}

// PodUID is the UID that pod's containers' cgroups carry, the one a
// k8s:pod-uid selector names: the pod's own, except for the API server's
// mirror of a static pod, which keeps the kubelet's UID of the static pod
// in an annotation. So the selector is the same whichever pod source the
// agent reads (the kubelet lists the static pod, the API server its
// mirror), and the registrar renders the same.
func PodUID(pod *corev1.Pod) string {
	if m := pod.Annotations[mirrorAnnotation]; m != "" {
		return m
	}
	return string(pod.UID)
}

// hasUID reports whether the cgroups of pod's containers carry uid.
func hasUID(pod *corev1.Pod, uid string) bool {
	return string(pod.UID) == uid || (uid != "" && pod.Annotations[mirrorAnnotation] == uid)
}

// selectors returns the k8s selectors of container c of pod, in the order
// Attest documents.
func selectors(pod *corev1.Pod, c *corev1.ContainerStatus) []attest.Selector {
	out := make([]attest.Selector, 0, 8+len(pod.Labels)+len(pod.OwnerReferences))
	add := func(v string) { out = append(out, attest.Selector{Type: Type, Value: v}) }
	add("ns:" + pod.Namespace)
	if sa := pod.Spec.ServiceAccountName; sa != "" {
		add("sa:" + sa)
	}
	add("pod-name:" + pod.Name)
	add("pod-uid:" + PodUID(pod))
	if n := pod.Spec.NodeName; n != "" {
		add("node-name:" + n)
	}
	keys := make([]string, 0, len(pod.Labels))
	for k := range pod.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		add("pod-label:" + k + ":" + pod.Labels[k])
	}
	for _, o := range pod.OwnerReferences {
		add("pod-owner:" + o.Kind + ":" + o.Name)
	}
	add("container-name:" + c.Name)
	if c.Image != "" {
		add("container-image:" + c.Image)
	}
	if c.ImageID != "" && c.ImageID != c.Image {
		add("container-image:" + c.ImageID)
	}
	return out
}
