package k8s_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tallyid/tally/test/internal/k8s"
)

const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraNodeUID  = "authentication.kubernetes.io/node-uid"
)

func review(t *testing.T, c *k8s.Cluster, token string, audiences ...string) authenticationv1.TokenReviewStatus {
	t.Helper()
	tr, err := c.Client.AuthenticationV1().TokenReviews().Create(t.Context(), &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return tr.Status
}

func TestCluster(t *testing.T) {
	c := k8s.Start(t)
	require.Equal(t, k8s.DefaultSAIssuer, c.SAIssuer)

	t.Run("bound token review carries pod and node", func(t *testing.T) {
		ns := c.Namespace(t)
		node := c.Node(t, "node-"+ns, map[string]string{"zone": "a"})
		assert.Equal(t, "a", node.Labels["zone"])
		assert.Equal(t, node.Name, node.Labels["kubernetes.io/hostname"])
		c.ServiceAccount(t, ns, "workload")
		pod := c.Pod(t, ns, "web", "workload", node.Name, map[string]string{"app": "web"}, "app", "sidecar")
		require.NotEmpty(t, pod.UID)
		assert.Equal(t, node.Name, pod.Spec.NodeName)
		assert.Equal(t, corev1.PodPending, pod.Status.Phase)
		assert.Equal(t, corev1.PodQOSBestEffort, pod.Status.QOSClass)
		require.Len(t, pod.Spec.Containers, 2)
		assert.Equal(t, k8s.Image("sidecar"), pod.Spec.Containers[1].Image)

		token := c.Token(t, ns, "workload", []string{"tally-server"}, pod, 0)
		st := review(t, c, token, "tally-server")
		require.True(t, st.Authenticated, st.Error)
		assert.Equal(t, "system:serviceaccount:"+ns+":workload", st.User.Username)
		assert.Equal(t, []string{"tally-server"}, st.Audiences)
		assert.Equal(t, authenticationv1.ExtraValue{"web"}, st.User.Extra[extraPodName])
		assert.Equal(t, authenticationv1.ExtraValue{string(pod.UID)}, st.User.Extra[extraPodUID])
		assert.Equal(t, authenticationv1.ExtraValue{node.Name}, st.User.Extra[extraNodeName])
		assert.Equal(t, authenticationv1.ExtraValue{string(node.UID)}, st.User.Extra[extraNodeUID])

		assert.False(t, review(t, c, token, "someone-else").Authenticated, "wrong audience")
		assert.False(t, review(t, c, token).Authenticated, "apiserver's default audience")
		assert.True(t, review(t, c, c.Token(t, ns, "workload", nil, pod, 0)).Authenticated, "default audience token")
	})

	t.Run("deleted pod invalidates its never-reviewed token", func(t *testing.T) {
		ns := c.Namespace(t)
		pod := c.Pod(t, ns, "doomed", "", "node-x", nil)
		assert.Equal(t, "default", pod.Spec.ServiceAccountName, "default SA created by the helper")
		token := c.Token(t, ns, "default", []string{"tally-server"}, pod, 0)
		c.DeletePod(t, pod)
		_, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
		require.True(t, apierrors.IsNotFound(err), "pod still there: %v", err)
		st := review(t, c, token, "tally-server")
		assert.False(t, st.Authenticated)
		assert.NotEmpty(t, st.Error)
		c.DeletePod(t, pod) // already gone: no error
	})

	t.Run("terminating and finished pods keep authenticating", func(t *testing.T) {
		ns := c.Namespace(t)
		leaving := c.Pod(t, ns, "leaving", "", "node-x", nil)
		leavingToken := c.Token(t, ns, "default", []string{"tally-server"}, leaving, 0)
		got := c.TerminatePod(t, leaving)
		require.NotNil(t, got.DeletionTimestamp)
		assert.Equal(t, leaving.UID, got.UID)
		assert.True(t, review(t, c, leavingToken, "tally-server").Authenticated, "terminating pod's token")

		done := c.Pod(t, ns, "done", "", "node-x", nil)
		doneToken := c.Token(t, ns, "default", []string{"tally-server"}, done, 0)
		assert.Equal(t, corev1.PodFailed, c.SetPodPhase(t, done, corev1.PodFailed).Status.Phase)
		assert.True(t, review(t, c, doneToken, "tally-server").Authenticated, "failed pod's token")
		c.DeletePod(t, got) // a terminating pod is force-deleted
	})

	t.Run("apiserver request counter", func(t *testing.T) {
		before := c.APIRequests(t)
		review(t, c, "junk", "tally-server")
		review(t, c, "junk", "tally-server")
		var d k8s.APIRequests
		for range 50 { // counted once answered: may lag the response a little
			if d = c.APIRequests(t).Sub(before); d["POST tokenreviews"] >= 2 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		assert.Equal(t, float64(2), d["POST tokenreviews"])
		assert.Zero(t, d["GET pods"])
	})

	t.Run("pods of different namespaces share nothing", func(t *testing.T) {
		a, b := c.Namespace(t), c.Namespace(t)
		require.NotEqual(t, a, b)
		pa := c.Pod(t, a, "same", "", "node-x", nil)
		pb := c.Pod(t, b, "same", "", "node-x", nil)
		assert.NotEqual(t, pa.UID, pb.UID)
	})

	t.Run("kubeconfig and admin token", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		require.NoError(t, err)
		assert.Equal(t, c.URL, cfg.Host)
		cs, err := kubernetes.NewForConfig(cfg)
		require.NoError(t, err)
		_, err = cs.CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{Limit: 1})
		require.NoError(t, err)
		st := review(t, c, c.AdminToken)
		require.True(t, st.Authenticated)
		assert.Contains(t, st.User.Groups, "system:masters")
	})

	t.Run("second cluster runs alongside with its own key", func(t *testing.T) {
		other := k8s.Start(t)
		require.NotEqual(t, c.URL, other.URL)
		require.NotEqual(t, c.EtcdURL, other.EtcdURL)
		assert.Equal(t, c.SAIssuer, other.SAIssuer, "same issuer, different signing key")
		assert.False(t, c.SAKey.Equal(other.SAKey))

		ns := other.Namespace(t)
		pod := other.Pod(t, ns, "web", "", "node-x", nil)
		token := other.Token(t, ns, "default", []string{"tally-server"}, pod, 0)
		assert.True(t, review(t, other, token, "tally-server").Authenticated)
		assert.False(t, review(t, c, token, "tally-server").Authenticated, "other cluster's token accepted")

		_, err := c.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "clusters share state: %v", err)
	})
}
