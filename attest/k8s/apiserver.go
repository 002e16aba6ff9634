package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/tallyid/tally/internal/kube"
	"github.com/tallyid/tally/internal/logkey"
)

// PodListWatch lists and watches the pods bound to node (field selector
// spec.nodeName) through the API server of cfg, with user agent
// "tally-agent" when cfg sets none. It uses kube.RESTClient, which knows
// only core/v1, not client-go's full clientset.
func PodListWatch(cfg *rest.Config, node string) (cache.ListerWatcher, error) {
	rc, err := kube.RESTClient(cfg, "tally-agent")
	if err != nil {
		return nil, fmt.Errorf("k8s: kubernetes client: %w", err)
	}
	onNode := fields.OneTermEqualSelector("spec.nodeName", node)
	return cache.NewListWatchFromClient(rc, "pods", metav1.NamespaceAll, onNode), nil
}

// Indexes of the pod watch.
const (
	indexUID       = "uid"          // podUIDs
	indexContainer = "container-id" // containerIDs
)

// apiserverSource watches this node's pods on the API server and indexes
// them by pod UID and container ID.
type apiserverSource struct {
	node     string
	informer cache.SharedIndexInformer
	log      *slog.Logger
}

func newAPIServerSource(cfg Config) (*apiserverSource, error) {
	if cfg.Pods == nil {
		return nil, errors.New("k8s: Pods is required with PodSource apiserver")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("k8s: NodeName is required with PodSource apiserver")
	}
	inf := cache.NewSharedIndexInformer(cfg.Pods, &corev1.Pod{}, 0, cache.Indexers{
		indexUID: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				return podUIDs(p), nil
			}
			return nil, nil
		},
		indexContainer: func(obj any) ([]string, error) {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return nil, nil
			}
			var ids []string
			containerIDs(p, func(id string) { ids = append(ids, id) })
			return ids, nil
		},
	})
	if err := inf.SetTransform(slimPod); err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	return &apiserverSource{node: cfg.NodeName, informer: inf, log: cfg.Logger}, nil
}

// run lists and watches the node's pods until ctx is done.
func (s *apiserverSource) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		if cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced) {
			s.log.Info("pod watch synced", logkey.Node, s.node, logkey.Pods, len(s.informer.GetStore().ListKeys()))
		}
	})
	s.informer.RunWithContext(ctx)
	wg.Wait()
	return nil
}

// find answers from the watch's store, which is always current: seen and
// generations do not apply.
func (s *apiserverSource) find(_ context.Context, podUID, containerID string, _ uint64) (found, error) {
	if !s.informer.HasSynced() {
		return found{}, errNotSynced
	}
	idx := s.informer.GetIndexer()
	objs, err := idx.ByIndex(indexContainer, containerID)
	if err != nil {
		return found{}, fmt.Errorf("k8s: %w", err)
	}
	var f found
	for _, o := range objs {
		f.pods = append(f.pods, o.(*corev1.Pod))
	}
	if objs, err := idx.ByIndex(indexUID, podUID); err == nil && len(objs) > 0 {
		f.byUID = objs[0].(*corev1.Pod)
	}
	return f, nil
}

// slimPod keeps of a watched pod only what attestation reads, so that the
// store of a node's pods stays small: name, namespace, UID, labels, owners,
// the mirror-pod annotation, node and service account, and the name, ID and
// images of each container status.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	s := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            p.Name,
			Namespace:       p.Namespace,
			UID:             p.UID,
			ResourceVersion: p.ResourceVersion,
			Labels:          p.Labels,
			OwnerReferences: p.OwnerReferences,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			ServiceAccountName: p.Spec.ServiceAccountName,
		},
		Status: corev1.PodStatus{
			Phase:                      p.Status.Phase,
			ContainerStatuses:          slimStatuses(p.Status.ContainerStatuses),
			InitContainerStatuses:      slimStatuses(p.Status.InitContainerStatuses),
			EphemeralContainerStatuses: slimStatuses(p.Status.EphemeralContainerStatuses),
		},
	}
	if m := p.Annotations[mirrorAnnotation]; m != "" {
		s.Annotations = map[string]string{mirrorAnnotation: m}
	}
	return s, nil
}

func slimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, c := range in {
		out[i] = corev1.ContainerStatus{Name: c.Name, ContainerID: c.ContainerID, Image: c.Image, ImageID: c.ImageID}
	}
	return out
}
