package kube_test

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"github.com/tallyid/tally/internal/kube"
)

// apiserver is an HTTPS server answering GET of pod shop/web and POST of a
// TokenReview as the apiserver does, to bearer token "token-1" only, and
// recording the user agent of each request.
type apiserver struct {
	srv *httptest.Server

	mu     sync.Mutex
	agents []string
}

func newAPIServer(t *testing.T) *apiserver {
	t.Helper()
	a := &apiserver{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces/shop/pods/web", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(t, w, corev1.Pod{
			TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "6a1f0c2e-3b7d-4e59-9c1a-2f8e7d6b5a41"},
			Spec:       corev1.PodSpec{NodeName: "node-1"},
		})
	})
	mux.HandleFunc("POST /apis/authentication.k8s.io/v1/tokenreviews", func(w http.ResponseWriter, r *http.Request) {
		var tr authv1.TokenReview
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &tr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tr.Status = authv1.TokenReviewStatus{Authenticated: tr.Spec.Token == "sa-token", User: authv1.UserInfo{Username: "system:serviceaccount:shop:web"}}
		writeJSON(t, w, tr)
	})
	a.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.agents = append(a.agents, r.UserAgent())
		a.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer token-1" {
			w.WriteHeader(http.StatusUnauthorized)
			writeJSON(t, w, metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Code: http.StatusUnauthorized, Reason: metav1.StatusReasonUnauthorized})
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func writeJSON(t *testing.T, w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Errorf("apiserver: %v", err)
	}
}

func (a *apiserver) userAgents() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.agents...)
}

// kubeconfig writes a kubeconfig for a's server, trusting its CA and
// authenticating with token, and returns its path.
func (a *apiserver) kubeconfig(t *testing.T, token string) string {
	t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})
	return writeFile(t, `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: `+a.srv.URL+`
    certificate-authority-data: `+base64.StdEncoding.EncodeToString(ca)+`
users:
- name: agent
  user:
    token: `+token+`
contexts:
- name: test
  context:
    cluster: test
    user: agent
current-context: test
`)
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func TestConfigKubeconfig(t *testing.T) {
	a := newAPIServer(t)
	cfg, err := kube.Config(a.kubeconfig(t, "token-1"))
	require.NoError(t, err)
	assert.Equal(t, a.srv.URL, cfg.Host)
	assert.Equal(t, "token-1", cfg.BearerToken)
	assert.NotEmpty(t, cfg.TLSClientConfig.CAData)

	// The configuration reaches the server: TLS verified against the
	// kubeconfig's CA, the token sent.
	rc, err := kube.RESTClient(cfg, "tally-test")
	require.NoError(t, err)
	var pod corev1.Pod
	require.NoError(t, rc.Get().Namespace("shop").Resource("pods").Name("web").Do(t.Context()).Into(&pod))
	assert.Equal(t, "node-1", pod.Spec.NodeName)
}

func TestConfigErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent")
	tests := []struct {
		name string
		path string
		want string
	}{
		{name: "missing file", path: missing, want: "kube: kubeconfig " + missing + ": "},
		{name: "not a kubeconfig", path: writeFile(t, "clusters: [\n"), want: "kube: kubeconfig "},
		{name: "no current context", path: writeFile(t, "apiVersion: v1\nkind: Config\n"), want: "kube: kubeconfig "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := kube.Config(tt.path)
			require.Error(t, err)
			assert.Nil(t, cfg)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), tt.path)
		})
	}
}

// TestConfigInClusterOutsideCluster: with no kubeconfig and no
// KUBERNETES_SERVICE_HOST/PORT (as outside a pod), Config refuses and says
// it tried the in-cluster configuration.
func TestConfigInClusterOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	cfg, err := kube.Config("")
	require.Error(t, err)
	assert.Nil(t, cfg)
	assert.ErrorIs(t, err, rest.ErrNotInCluster)
	assert.Contains(t, err.Error(), "kube: in-cluster config (no kubeconfig given): ")
}

func TestRESTClient(t *testing.T) {
	a := newAPIServer(t)
	cfg, err := kube.Config(a.kubeconfig(t, "token-1"))
	require.NoError(t, err)
	cfg.QPS, cfg.Burst = 7, 9

	rc, err := kube.RESTClient(cfg, "tally-test", authv1.AddToScheme)
	require.NoError(t, err)
	assert.Equal(t, float32(7), rc.GetRateLimiter().QPS(), "the caller's rate limit")
	assert.Empty(t, cfg.APIPath, "cfg is not changed")
	assert.Nil(t, cfg.GroupVersion, "cfg is not changed")
	assert.Empty(t, cfg.UserAgent, "cfg is not changed")

	// core/v1 through the client's own paths.
	var pod corev1.Pod
	require.NoError(t, rc.Get().Namespace("shop").Resource("pods").Name("web").Do(t.Context()).Into(&pod))
	assert.Equal(t, "web", pod.Name)
	// Another group through AbsPath, with the type added to the scheme.
	in := &authv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Spec:     authv1.TokenReviewSpec{Token: "sa-token"},
	}
	var out authv1.TokenReview
	require.NoError(t, rc.Post().AbsPath("/apis/authentication.k8s.io/v1/tokenreviews").Body(in).Do(t.Context()).Into(&out))
	assert.True(t, out.Status.Authenticated)
	assert.Equal(t, []string{"tally-test", "tally-test"}, a.userAgents(), "the default user agent")

	// A user agent of the caller's is kept.
	cfg.UserAgent = "operator/1.0"
	rc, err = kube.RESTClient(cfg, "tally-test")
	require.NoError(t, err)
	require.NoError(t, rc.Get().Namespace("shop").Resource("pods").Name("web").Do(t.Context()).Into(&pod))
	assert.Equal(t, "operator/1.0", a.userAgents()[2])

	// Errors from the apiserver come back as its Status.
	cfg.BearerToken = "wrong"
	rc, err = kube.RESTClient(cfg, "tally-test")
	require.NoError(t, err)
	err = rc.Get().Namespace("shop").Resource("pods").Name("web").Do(t.Context()).Into(&pod)
	var st interface{ Status() metav1.Status }
	require.ErrorAs(t, err, &st)
	assert.Equal(t, metav1.StatusReasonUnauthorized, st.Status().Reason)
}

func TestRESTClientErrors(t *testing.T) {
	errScheme := errors.New("no such type")
	_, err := kube.RESTClient(&rest.Config{Host: "https://127.0.0.1:6443"}, "tally-test", func(*runtime.Scheme) error { return errScheme })
	require.ErrorIs(t, err, errScheme)
	assert.Contains(t, err.Error(), "kube: scheme: ")

	_, err = kube.RESTClient(&rest.Config{Host: "https://127.0.0.1:6443/%zz"}, "tally-test")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kube: rest client: ")
}
