package k8spsat

import (
	"context"
	"fmt"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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

// NewCluster returns a Cluster backed by client. The client's identity needs
// RBAC to create tokenreviews (authentication.k8s.io) and to get pods and
// nodes. Reads go to the apiserver every time (no cache), so a deleted pod
// is seen as deleted at once.
func NewCluster(client kubernetes.Interface) Cluster {
	return &cluster{client: client}
}

type cluster struct {
	client kubernetes.Interface
}

func (c *cluster) ReviewToken(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	tr, err := c.client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authv1.TokenReviewStatus{}, fmt.Errorf("k8spsat: create token review: %w", err)
	}
	return tr.Status, nil
}

func (c *cluster) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	pod, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, getError("pod "+ns+"/"+name, err)
	}
	return pod, nil
}

func (c *cluster) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	node, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
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
