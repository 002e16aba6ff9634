package k8spsat

import (
	"context"
	"fmt"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/tallyid/tally/internal/kube"
)

// Cluster is the part of the Kubernetes API the Attestor needs.
// Implementations must be safe for concurrent use and must never put the
// token into an error.
type Cluster interface {
	// ReviewToken asks the apiserver to authenticate token for audiences
	// (a TokenReview) and returns the review's status. An unauthenticated
	// token is a status with Authenticated false, not an error.
	ReviewToken(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error)
	// GetPod returns the pod ns/name, or an error wrapping ErrNotFound if it
	// does not exist.
	GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error)
	// GetNode returns the node name, or an error wrapping ErrNotFound if it
	// does not exist.
	GetNode(ctx context.Context, name string) (*corev1.Node, error)
}

// Client-side rate limit of NewCluster when the rest.Config sets none.
// client-go's own default, 5 requests/s with bursts of 10, is shared by every
// attestation and lets 20 agents attesting together wait 12 s; a cluster
// restart of 1,000 nodes (two or three calls each) would take ten minutes.
// 200/s with bursts of 400 attests 200 agents in about two seconds of API
// budget and 1,000 in about 12 s. The apiserver's priority and fairness
// still protects it: what it refuses with 429 client-go retries after the
// delay it is told.
const (
	DefaultQPS   = 200
	DefaultBurst = 400
)

// NewCluster returns a Cluster that talks to the apiserver of cfg, rate
// limited by cfg.QPS and cfg.Burst (DefaultQPS and DefaultBurst when 0). The
// identity needs RBAC to create tokenreviews (authentication.k8s.io) and to
// get pods and nodes. Each call goes to the apiserver (the Attestor caches
// nodes itself). The user agent is "tally-server" when cfg sets none. It
// uses kube.RESTClient, which knows only the types it reads (core/v1 and
// authentication/v1), not client-go's full clientset.
func NewCluster(cfg *rest.Config) (Cluster, error) {
	c := rest.CopyConfig(cfg)
	if c.QPS == 0 {
		c.QPS = DefaultQPS
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	rc, err := kube.RESTClient(c, "tally-server", authv1.AddToScheme)
	if err != nil {
		return nil, fmt.Errorf("k8spsat: kubernetes client: %w", err)
	}
	return &cluster{rc: rc}, nil
}

type cluster struct {
	rc rest.Interface
}

func (c *cluster) ReviewToken(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	in := &authv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Spec:     authv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}
	out := &authv1.TokenReview{}
	err := c.rc.Post().AbsPath("/apis/authentication.k8s.io/v1/tokenreviews").Body(in).Do(ctx).Into(out)
	if err != nil {
		return authv1.TokenReviewStatus{}, fmt.Errorf("k8spsat: create token review: %w", err)
	}
	return out.Status, nil
}

func (c *cluster) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	if err := c.rc.Get().AbsPath("/api/v1/namespaces", ns, "pods", name).Do(ctx).Into(pod); err != nil {
		return nil, getError("pod "+ns+"/"+name, err)
	}
	return pod, nil
}

func (c *cluster) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	node := &corev1.Node{}
	if err := c.rc.Get().AbsPath("/api/v1/nodes", name).Do(ctx).Into(node); err != nil {
		return nil, getError("node "+name, err)
	}
	return node, nil
}

// getError wraps err from getting what, adding ErrNotFound if the apiserver
// said so.
func getError(what string, err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("k8spsat: get %s: %w: %w", what, ErrNotFound, err)
	}
	return fmt.Errorf("k8spsat: get %s: %w", what, err)
}
