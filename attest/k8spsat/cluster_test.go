package k8spsat

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/tallyid/tally/attest"
)

// fakeAPI is an HTTP server answering the three apiserver calls the way the
// apiserver does (JSON objects, metav1.Status errors): testToken is
// authenticated for the requested audiences it was issued for
// (testAudience). The real apiserver is exercised in test/e2e.
type fakeAPI struct {
	mu        sync.Mutex
	podGone   bool
	forbidden bool
	served    int
}

// requests is how many requests the fake apiserver has served.
func (f *fakeAPI) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.served
}

func newFakeAPI(t *testing.T) (*fakeAPI, *rest.Config) {
	t.Helper()
	f := &fakeAPI{}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	return f, &rest.Config{Host: srv.URL}
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.served++
	podGone, forbidden := f.podGone, f.forbidden
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	status := func(code int, reason metav1.StatusReason) {
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
			Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: string(reason)})
	}
	if forbidden {
		status(http.StatusForbidden, metav1.StatusReasonForbidden)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/apis/authentication.k8s.io/v1/tokenreviews":
		raw, _ := io.ReadAll(r.Body)
		var tr authv1.TokenReview
		if err := json.Unmarshal(raw, &tr); err != nil {
			status(http.StatusBadRequest, metav1.StatusReasonBadRequest)
			return
		}
		tr.Status = authv1.TokenReviewStatus{Error: "invalid bearer token"}
		if tr.Spec.Token == testToken {
			st := testStatus()
			st.Audiences = nil
			for _, aud := range tr.Spec.Audiences {
				if aud == testAudience {
					st.Audiences = append(st.Audiences, aud)
				}
			}
			tr.Status = st
			if len(st.Audiences) == 0 {
				tr.Status = authv1.TokenReviewStatus{Error: "token audiences are invalid"}
			}
		}
		_ = json.NewEncoder(w).Encode(tr)
	case r.URL.Path == "/api/v1/namespaces/"+testNS+"/pods/"+testPod && !podGone:
		pod := testPodObject()
		pod.APIVersion, pod.Kind = "v1", "Pod"
		_ = json.NewEncoder(w).Encode(pod)
	case r.URL.Path == "/api/v1/nodes/"+testNode:
		node := testNodeObject()
		node.APIVersion, node.Kind = "v1", "Node"
		_ = json.NewEncoder(w).Encode(node)
	case strings.HasPrefix(r.URL.Path, "/api/v1/"):
		status(http.StatusNotFound, metav1.StatusReasonNotFound)
	default:
		status(http.StatusBadRequest, metav1.StatusReasonBadRequest)
	}
}

func newTestCluster(t *testing.T) (*fakeAPI, Cluster) {
	t.Helper()
	f, cfg := newFakeAPI(t)
	c, err := NewCluster(cfg)
	require.NoError(t, err)
	return f, c
}

func TestNewCluster(t *testing.T) {
	ctx := context.Background()
	_, c := newTestCluster(t)

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
	f, c := newTestCluster(t)
	f.mu.Lock()
	f.forbidden = true
	f.mu.Unlock()

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

// TestAttestWithCluster runs the Attestor on NewCluster, so the two agree
// on the not-found contract.
func TestAttestWithCluster(t *testing.T) {
	ctx := context.Background()
	f, c := newTestCluster(t)
	a, err := New(testConfig(c))
	require.NoError(t, err)

	res, err := a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod-eu/"+testNodeUID, res.AgentID.String())

	// The agent pod is deleted: its token no longer attests.
	f.mu.Lock()
	f.podGone = true
	f.mu.Unlock()
	_, err = a.Attest(ctx, []byte(testToken))
	require.ErrorIs(t, err, attest.ErrDenied)
}

func TestNewClusterRateLimit(t *testing.T) {
	_, cfg := newFakeAPI(t)
	c, err := NewCluster(cfg)
	require.NoError(t, err)
	assert.Equal(t, float32(DefaultQPS), c.(*cluster).rc.GetRateLimiter().QPS(), "default, not client-go's 5")
	assert.Zero(t, cfg.QPS, "the caller's config is not changed")

	cfg.QPS, cfg.Burst = 7, 9
	c, err = NewCluster(cfg)
	require.NoError(t, err)
	assert.Equal(t, float32(7), c.(*cluster).rc.GetRateLimiter().QPS())
}
