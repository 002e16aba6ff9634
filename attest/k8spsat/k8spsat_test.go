package k8spsat

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tallyid/tally/attest"
)

// The world every Attest case starts from: an agent pod of the allowed
// service account on node-a.
const (
	testToken    = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXBheWxvYWQ.c2lnbmF0dXJl"
	testNS       = "tally-system"
	testSA       = "tally-agent"
	testPod      = "tally-agent-x7k2p"
	testPodUID   = "6f1b1c2e-8d0a-4a5e-9d43-2b7c1f0e9a11"
	testNode     = "node-a"
	testNodeUID  = "0c9e2d41-5b7f-4e8a-a1d6-3f4b5c6d7e8f"
	testCluster  = "prod-eu"
	testAudience = DefaultAudience
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// fakeCluster answers like the apiserver for one valid token and the pods
// and nodes it holds.
type fakeCluster struct {
	token     string
	status    authv1.TokenReviewStatus
	pods      map[string]*corev1.Pod // "ns/name"
	nodes     map[string]*corev1.Node
	reviewErr error
	podErr    error
	nodeErr   error

	gotAudiences []string
}

func (f *fakeCluster) ReviewToken(_ context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	f.gotAudiences = audiences
	if f.reviewErr != nil {
		return authv1.TokenReviewStatus{}, f.reviewErr
	}
	if token != f.token {
		return authv1.TokenReviewStatus{Error: "invalid bearer token"}, nil
	}
	return f.status, nil
}

func (f *fakeCluster) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if f.podErr != nil {
		return nil, f.podErr
	}
	pod, ok := f.pods[ns+"/"+name]
	if !ok {
		return nil, fmt.Errorf("pod %s/%s: %w", ns, name, ErrNotFound)
	}
	return pod, nil
}

func (f *fakeCluster) GetNode(_ context.Context, name string) (*corev1.Node, error) {
	if f.nodeErr != nil {
		return nil, f.nodeErr
	}
	node, ok := f.nodes[name]
	if !ok {
		return nil, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	return node, nil
}

func testPodObject() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testPod, UID: testPodUID},
		Spec:       corev1.PodSpec{ServiceAccountName: testSA, NodeName: testNode},
	}
}

func testNodeObject() *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: testNode,
		UID:  testNodeUID,
		Labels: map[string]string{
			"topology.kubernetes.io/zone":      "eu-1a",
			"node.kubernetes.io/instance-type": "m5.large",
			"kubernetes.io/hostname":           testNode, // not allow-listed
		},
	}}
}

// testStatus is what kube-apiserver returns for a bound token of the agent pod.
func testStatus() authv1.TokenReviewStatus {
	return authv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{testAudience},
		User: authv1.UserInfo{
			Username: "system:serviceaccount:" + testNS + ":" + testSA,
			UID:      "b2a4c6e8-0000-4000-8000-000000000001",
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + testNS, "system:authenticated"},
			Extra: map[string]authv1.ExtraValue{
				extraPodName:  {testPod},
				extraPodUID:   {testPodUID},
				extraNodeName: {testNode},
				extraNodeUID:  {testNodeUID},
				"authentication.kubernetes.io/credential-id": {"JTI=2f0c"},
			},
		},
	}
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{
		token:  testToken,
		status: testStatus(),
		pods:   map[string]*corev1.Pod{testNS + "/" + testPod: testPodObject()},
		nodes:  map[string]*corev1.Node{testNode: testNodeObject()},
	}
}

func testConfig(c Cluster) Config {
	return Config{
		TrustDomain:     testTD,
		ClusterName:     testCluster,
		ServiceAccounts: []string{"kube-system:other", testNS + ":" + testSA},
		NodeLabelKeys:   []string{"topology.kubernetes.io/zone", "node.kubernetes.io/instance-type", "absent.example.org/key"},
		Cluster:         c,
	}
}

func sel(value string) attest.Selector { return attest.Selector{Type: Type, Value: value} }

func TestAttestSuccess(t *testing.T) {
	fc := newFakeCluster()
	a, err := New(testConfig(fc))
	require.NoError(t, err)

	res, err := a.Attest(context.Background(), []byte(testToken))
	require.NoError(t, err)

	assert.Equal(t, []string{DefaultAudience}, fc.gotAudiences, "TokenReview audiences")
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod-eu/"+testNodeUID, res.AgentID.String())
	assert.Equal(t, []attest.Selector{
		sel("cluster:prod-eu"),
		sel("agent_ns:tally-system"),
		sel("agent_sa:tally-agent"),
		sel("agent_pod_name:" + testPod),
		sel("agent_pod_uid:" + testPodUID),
		sel("agent_node_name:node-a"),
		sel("agent_node_uid:" + testNodeUID),
		// Allow-listed labels only, sorted by key; absent keys give nothing.
		sel("agent_node_label:node.kubernetes.io/instance-type:m5.large"),
		sel("agent_node_label:topology.kubernetes.io/zone:eu-1a"),
	}, res.Selectors)
	assert.Empty(t, res.Aliases)
	assert.True(t, res.CanReattest)
}

func TestAttestCustomAudience(t *testing.T) {
	fc := newFakeCluster()
	cfg := testConfig(fc)
	cfg.Audience = "tally-server.prod"
	a, err := New(cfg)
	require.NoError(t, err)

	// The apiserver confirms only the default audience: not ours.
	_, err = a.Attest(context.Background(), []byte(testToken))
	require.ErrorIs(t, err, attest.ErrDenied)
	assert.Equal(t, []string{"tally-server.prod"}, fc.gotAudiences)

	fc.status.Audiences = []string{"tally-server.prod"}
	_, err = a.Attest(context.Background(), []byte(testToken))
	require.NoError(t, err)
}

func TestAttestFailures(t *testing.T) {
	apiErr := errors.New("connection refused")
	tests := []struct {
		name   string
		token  string // default testToken
		mutate func(*fakeCluster)
		denied bool
		errMsg string
	}{
		{
			name:   "unknown token",
			token:  testToken + "x",
			mutate: func(*fakeCluster) {},
			denied: true,
			errMsg: "token not authenticated: invalid bearer token",
		},
		{
			name: "not authenticated, error echoes the token",
			mutate: func(f *fakeCluster) {
				f.status = authv1.TokenReviewStatus{Error: "token " + testToken + " has expired"}
			},
			denied: true,
			errMsg: "token not authenticated: token [token] has expired",
		},
		{
			name:   "authenticated without audiences",
			mutate: func(f *fakeCluster) { f.status.Audiences = nil },
			denied: true,
			errMsg: `not valid for audience "tally-server"`,
		},
		{
			name:   "authenticated for the apiserver's audience only",
			mutate: func(f *fakeCluster) { f.status.Audiences = []string{"https://kubernetes.default.svc.cluster.local"} },
			denied: true,
			errMsg: `not valid for audience "tally-server"`,
		},
		{
			name:   "not a service account",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:node:node-a" },
			denied: true,
			errMsg: "is not a service account",
		},
		{
			name:   "malformed service account user",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:serviceaccount:" + testNS },
			denied: true,
			errMsg: "is not a service account",
		},
		{
			name:   "service account not allowed",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:serviceaccount:" + testNS + ":default" },
			denied: true,
			errMsg: "service account tally-system:default is not allowed",
		},
		{
			name:   "allowed name in another namespace",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:serviceaccount:default:" + testSA },
			denied: true,
			errMsg: "service account default:tally-agent is not allowed",
		},
		{
			name:   "no pod-name extra",
			mutate: func(f *fakeCluster) { delete(f.status.User.Extra, extraPodName) },
			denied: true,
			errMsg: "not bound to a pod: no " + extraPodName,
		},
		{
			name:   "no pod-uid extra",
			mutate: func(f *fakeCluster) { delete(f.status.User.Extra, extraPodUID) },
			denied: true,
			errMsg: "not bound to a pod: no " + extraPodUID,
		},
		{
			name:   "two pod names",
			mutate: func(f *fakeCluster) { f.status.User.Extra[extraPodName] = []string{testPod, "other"} },
			denied: true,
			errMsg: "2 values for " + extraPodName,
		},
		{
			name:   "empty pod uid",
			mutate: func(f *fakeCluster) { f.status.User.Extra[extraPodUID] = []string{""} },
			denied: true,
			errMsg: "1 values for " + extraPodUID,
		},
		{
			name:   "pod deleted",
			mutate: func(f *fakeCluster) { delete(f.pods, testNS+"/"+testPod) },
			denied: true,
			errMsg: "pod tally-system/tally-agent-x7k2p no longer exists",
		},
		{
			name: "pod recreated with the same name",
			mutate: func(f *fakeCluster) {
				f.pods[testNS+"/"+testPod].UID = "11111111-2222-4333-8444-555555555555"
			},
			denied: true,
			errMsg: "token is bound to uid " + testPodUID + " (pod recreated)",
		},
		{
			name:   "pod runs as another service account",
			mutate: func(f *fakeCluster) { f.pods[testNS+"/"+testPod].Spec.ServiceAccountName = "default" },
			denied: true,
			errMsg: `runs as service account "default"`,
		},
		{
			name:   "pod not scheduled",
			mutate: func(f *fakeCluster) { f.pods[testNS+"/"+testPod].Spec.NodeName = "" },
			denied: true,
			errMsg: "not scheduled",
		},
		{
			name:   "token bound to another node",
			mutate: func(f *fakeCluster) { f.status.User.Extra[extraNodeName] = []string{"node-b"} },
			denied: true,
			errMsg: "runs on node node-a, token is bound to node node-b",
		},
		{
			name:   "node deleted",
			mutate: func(f *fakeCluster) { delete(f.nodes, testNode) },
			denied: true,
			errMsg: "node node-a no longer exists",
		},
		{
			name: "node recreated with the same name",
			mutate: func(f *fakeCluster) {
				f.nodes[testNode].UID = types.UID("99999999-2222-4333-8444-555555555555")
			},
			denied: true,
			errMsg: "token is bound to uid " + testNodeUID + " (node recreated)",
		},
		{
			name:   "token review fails",
			mutate: func(f *fakeCluster) { f.reviewErr = apiErr },
			errMsg: "k8spsat: review token: connection refused",
		},
		{
			name: "token review fails echoing the token",
			mutate: func(f *fakeCluster) {
				f.reviewErr = fmt.Errorf("bad request for %s: %w", testToken, apiErr)
			},
			errMsg: "bad request for [token]: connection refused",
		},
		{
			name:   "get pod fails",
			mutate: func(f *fakeCluster) { f.podErr = apiErr },
			errMsg: "k8spsat: get pod tally-system/tally-agent-x7k2p: connection refused",
		},
		{
			name:   "get node fails",
			mutate: func(f *fakeCluster) { f.nodeErr = apiErr },
			errMsg: "k8spsat: get node node-a: connection refused",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster()
			tc.mutate(fc)
			a, err := New(testConfig(fc))
			require.NoError(t, err)
			token := tc.token
			if token == "" {
				token = testToken
			}

			res, err := a.Attest(context.Background(), []byte(token))
			require.Error(t, err)
			assert.Zero(t, res)
			assert.Equal(t, tc.denied, errors.Is(err, attest.ErrDenied), "denied: %v", err)
			if !tc.denied {
				assert.ErrorIs(t, err, apiErr)
			}
			assert.Contains(t, err.Error(), tc.errMsg)
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, err.Error(), "c2VjcmV0LXRva2VuLXBheWxvYWQ", "token payload in error")
		})
	}
}

func TestAttestEmptyData(t *testing.T) {
	fc := newFakeCluster()
	a, err := New(testConfig(fc))
	require.NoError(t, err)
	_, err = a.Attest(context.Background(), nil)
	require.ErrorIs(t, err, attest.ErrDenied)
	assert.Nil(t, fc.gotAudiences, "no TokenReview for an empty token")
}

func TestAttestWithoutNodeExtras(t *testing.T) {
	// Apiservers before the pod-node-info feature bind tokens to the pod only.
	fc := newFakeCluster()
	delete(fc.status.User.Extra, extraNodeName)
	delete(fc.status.User.Extra, extraNodeUID)
	a, err := New(testConfig(fc))
	require.NoError(t, err)

	res, err := a.Attest(context.Background(), []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod-eu/"+testNodeUID, res.AgentID.String())
	assert.Contains(t, res.Selectors, sel("agent_node_name:node-a"))
}

func TestNewConfig(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		errMsg string // "" = valid
	}{
		{name: "valid", mutate: func(*Config) {}},
		{name: "no label keys", mutate: func(c *Config) { c.NodeLabelKeys = nil }},
		{name: "no trust domain", mutate: func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, errMsg: "TrustDomain is required"},
		{name: "no cluster name", mutate: func(c *Config) { c.ClusterName = "" }, errMsg: "ClusterName is required"},
		{name: "cluster name with slash", mutate: func(c *Config) { c.ClusterName = "prod/eu" }, errMsg: `ClusterName "prod/eu"`},
		{name: "cluster name dot-dot", mutate: func(c *Config) { c.ClusterName = ".." }, errMsg: `ClusterName ".."`},
		{name: "no service accounts", mutate: func(c *Config) { c.ServiceAccounts = nil }, errMsg: "ServiceAccounts is required"},
		{name: "service account without namespace", mutate: func(c *Config) { c.ServiceAccounts = []string{"tally-agent"} }, errMsg: `"tally-agent" is not "namespace:name"`},
		{name: "service account empty namespace", mutate: func(c *Config) { c.ServiceAccounts = []string{":tally-agent"} }, errMsg: "is not"},
		{name: "service account empty name", mutate: func(c *Config) { c.ServiceAccounts = []string{"tally-system:"} }, errMsg: "is not"},
		{name: "service account two colons", mutate: func(c *Config) { c.ServiceAccounts = []string{"a:b:c"} }, errMsg: "is not"},
		{name: "empty label key", mutate: func(c *Config) { c.NodeLabelKeys = []string{"zone", ""} }, errMsg: "NodeLabelKeys: empty key"},
		{name: "no cluster", mutate: func(c *Config) { c.Cluster = nil }, errMsg: "Cluster is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(newFakeCluster())
			tc.mutate(&cfg)
			a, err := New(cfg)
			if tc.errMsg == "" {
				require.NoError(t, err)
				assert.NotNil(t, a)
				return
			}
			require.Error(t, err)
			assert.Nil(t, a)
			assert.Contains(t, err.Error(), "k8spsat: config: ")
			assert.Contains(t, err.Error(), tc.errMsg)
		})
	}
}
