package k8spsat

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tallyid/tally/attest"
)

// newFakeClientset holds the test pod and node, and answers TokenReview
// creates like the apiserver: testToken is authenticated for the audiences
// requested that it was issued for (testAudience).
func newFakeClientset(t *testing.T) *fake.Clientset {
	t.Helper()
	cs := fake.NewClientset(testPodObject(), testNodeObject())
	cs.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authv1.TokenReview).DeepCopy()
		if tr.Spec.Token != testToken {
			tr.Status = authv1.TokenReviewStatus{Error: "invalid bearer token"}
			return true, tr, nil
		}
		status := testStatus()
		status.Audiences = nil
		for _, aud := range tr.Spec.Audiences {
			if aud == testAudience {
				status.Audiences = append(status.Audiences, aud)
			}
		}
		if len(status.Audiences) == 0 {
			tr.Status = authv1.TokenReviewStatus{Error: "token audiences are invalid"}
			return true, tr, nil
		}
		tr.Status = status
		return true, tr, nil
	})
	return cs
}

func TestNewCluster(t *testing.T) {
	ctx := context.Background()
	c := NewCluster(newFakeClientset(t))

	status, err := c.ReviewToken(ctx, testToken, []string{testAudience, "other"})
	require.NoError(t, err)
	assert.Equal(t, testStatus(), status)

	status, err = c.ReviewToken(ctx, testToken, []string{"other"})
	require.NoError(t, err)
	assert.False(t, status.Authenticated)

	pod, err := c.GetPod(ctx, testNS, testPod)
	require.NoError(t, err)
	assert.Equal(t, testPodUID, string(pod.UID))
	assert.Equal(t, testNode, pod.Spec.NodeName)

	_, err = c.GetPod(ctx, testNS, "gone")
	assert.ErrorIs(t, err, ErrNotFound)
	assert.True(t, apierrors.IsNotFound(err), "the apiserver's error is kept")

	node, err := c.GetNode(ctx, testNode)
	require.NoError(t, err)
	assert.Equal(t, testNodeUID, string(node.UID))

	_, err = c.GetNode(ctx, "gone")
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestNewClusterAPIErrors(t *testing.T) {
	ctx := context.Background()
	cs := newFakeClientset(t)
	forbidden := func(resource string) k8stesting.ReactionFunc {
		return func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: resource}, "", errors.New("rbac"))
		}
	}
	cs.PrependReactor("create", "tokenreviews", forbidden("tokenreviews"))
	cs.PrependReactor("get", "pods", forbidden("pods"))
	cs.PrependReactor("get", "nodes", forbidden("nodes"))
	c := NewCluster(cs)

	_, err := c.ReviewToken(ctx, testToken, []string{testAudience})
	assert.True(t, apierrors.IsForbidden(err), "%v", err)
	assert.NotContains(t, err.Error(), testToken)

	_, err = c.GetPod(ctx, testNS, testPod)
	assert.True(t, apierrors.IsForbidden(err), "%v", err)
	assert.NotErrorIs(t, err, ErrNotFound)

	_, err = c.GetNode(ctx, testNode)
	assert.True(t, apierrors.IsForbidden(err), "%v", err)
	assert.NotErrorIs(t, err, ErrNotFound)
}

// TestAttestWithClientset runs the Attestor on NewCluster, so the two agree
// on the not-found contract.
func TestAttestWithClientset(t *testing.T) {
	ctx := context.Background()
	cs := newFakeClientset(t)
	a, err := New(testConfig(NewCluster(cs)))
	require.NoError(t, err)

	res, err := a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod-eu/"+testNodeUID, res.AgentID.String())

	// The agent pod is deleted: its token no longer attests.
	require.NoError(t, cs.CoreV1().Pods(testNS).Delete(ctx, testPod, metav1.DeleteOptions{}))
	_, err = a.Attest(ctx, []byte(testToken))
	require.ErrorIs(t, err, attest.ErrDenied)
	assert.ErrorContains(t, err, "no longer exists")
}
