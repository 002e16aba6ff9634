package k8spsat

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
)

// The world every Attest case starts from: an agent pod of the allowed
// service account on node-a.
const (
	testNS       = "tally-system"
	testSA       = "tally-agent"
	testSAUID    = "b2a4c6e8-0000-4000-8000-000000000001"
	testPod      = "tally-agent-x7k2p"
	testPodUID   = "6f1b1c2e-8d0a-4a5e-9d43-2b7c1f0e9a11"
	testNode     = "node-a"
	testNodeUID  = "0c9e2d41-5b7f-4e8a-a1d6-3f4b5c6d7e8f"
	testCluster  = "prod-eu"
	testAudience = DefaultAudience
	testIssuer   = "https://kubernetes.default.svc"
)

// testNow is the fake clock's time; testToken expires an hour later.
var testNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// testKey signs the test tokens. The Attestor never verifies a signature
// (the apiserver does), so any asymmetric key makes a realistic token.
var testKey = func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}()

// tokenClaimsJSON are the claims of a bound token as kube-apiserver issues
// them (TokenRequest with a pod boundObjectRef, pod-node-info on).
type tokenClaimsJSON struct {
	jwt.Claims
	Kubernetes map[string]any `json:"kubernetes.io"`
}

func testClaims() tokenClaimsJSON {
	return tokenClaimsJSON{
		Claims: jwt.Claims{
			Issuer:    testIssuer,
			Subject:   serviceAccountPrefix + testNS + ":" + testSA,
			Audience:  jwt.Audience{testAudience},
			IssuedAt:  jwt.NewNumericDate(testNow.Add(-time.Minute)),
			NotBefore: jwt.NewNumericDate(testNow.Add(-time.Minute)),
			Expiry:    jwt.NewNumericDate(testNow.Add(time.Hour)),
			ID:        "2f0c",
		},
		Kubernetes: map[string]any{
			"namespace":      testNS,
			"serviceaccount": map[string]any{"name": testSA, "uid": testSAUID},
			"pod":            map[string]any{"name": testPod, "uid": testPodUID},
			"node":           map[string]any{"name": testNode, "uid": testNodeUID},
		},
	}
}

// mintToken signs testClaims changed by mutate (nil: unchanged) with alg.
func mintToken(t testing.TB, alg jose.SignatureAlgorithm, mutate func(*tokenClaimsJSON)) string {
	t.Helper()
	token, err := signToken(alg, mutate)
	require.NoError(t, err)
	return token
}

func signToken(alg jose.SignatureAlgorithm, mutate func(*tokenClaimsJSON)) (string, error) {
	var key any = testKey
	if alg == jose.HS256 {
		key = []byte("0123456789abcdef0123456789abcdef")
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	c := testClaims()
	if mutate != nil {
		mutate(&c)
	}
	return jwt.Signed(signer).Claims(c).Serialize()
}

// testToken is the agent pod's projected token; testPayload its claims
// segment, which must never appear in an error or a log line.
var (
	testToken = func() string {
		token, err := signToken(jose.ES256, nil)
		if err != nil {
			panic(err)
		}
		return token
	}()
	testPayload = strings.Split(testToken, ".")[1]
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
			UID:      testSAUID,
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
		Clock:           clocktesting.NewFakePassiveClock(testNow),
		Logger:          slog.New(slog.DiscardHandler),
	}
}

// logBuffer collects the Attestor's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// withLog makes cfg log at debug level into the returned buffer.
func withLog(cfg *Config) *logBuffer {
	l := &logBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return l
}

// countingCluster counts the calls that reach the Cluster it wraps: each is
// one apiserver request with NewCluster.
type countingCluster struct {
	Cluster
	mu                   sync.Mutex
	reviews, pods, nodes int
}

func (c *countingCluster) ReviewToken(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	c.mu.Lock()
	c.reviews++
	c.mu.Unlock()
	return c.Cluster.ReviewToken(ctx, token, audiences)
}

func (c *countingCluster) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	c.mu.Lock()
	c.pods++
	c.mu.Unlock()
	return c.Cluster.GetPod(ctx, ns, name)
}

func (c *countingCluster) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	c.mu.Lock()
	c.nodes++
	c.mu.Unlock()
	return c.Cluster.GetNode(ctx, name)
}

// calls returns the TokenReviews, pod reads and node reads so far.
func (c *countingCluster) calls() [3]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return [3]int{c.reviews, c.pods, c.nodes}
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
	fc.token = mintToken(t, jose.ES256, func(c *tokenClaimsJSON) { c.Audience = jwt.Audience{"tally-server.prod"} })
	cfg := testConfig(fc)
	cfg.Audience = "tally-server.prod"
	log := withLog(&cfg)
	a, err := New(cfg)
	require.NoError(t, err)

	// The apiserver confirms only the default audience: not ours.
	_, err = a.Attest(context.Background(), []byte(fc.token))
	require.ErrorIs(t, err, attest.ErrDenied)
	assert.Equal(t, []string{"tally-server.prod"}, fc.gotAudiences)
	assert.Contains(t, log.String(), `"reason":"audience"`)

	fc.status.Audiences = []string{"tally-server.prod"}
	_, err = a.Attest(context.Background(), []byte(fc.token))
	require.NoError(t, err)
}

// refusalCases are the refusals of a token that passes the prefilter:
// what the fake apiserver and cluster say, and what the log must tell.
func refusalCases() []struct {
	name   string
	mutate func(*fakeCluster)
	reason string
	logMsg string // in the log line's detail or attributes
} {
	return []struct {
		name   string
		mutate func(*fakeCluster)
		reason string
		logMsg string
	}{
		{
			name:   "unknown token",
			mutate: func(f *fakeCluster) { f.token = "another" },
			reason: reasonNotAuthenticated,
			logMsg: "did not authenticate the token: invalid bearer token",
		},
		{
			name: "not authenticated, error echoes the token",
			mutate: func(f *fakeCluster) {
				f.status = authv1.TokenReviewStatus{Error: "token " + testToken + " has expired"}
			},
			reason: reasonNotAuthenticated,
			logMsg: "token [token] has expired",
		},
		{
			name:   "authenticated without audiences",
			mutate: func(f *fakeCluster) { f.status.Audiences = nil },
			reason: reasonAudience,
			logMsg: `not valid for audience \"tally-server\"`,
		},
		{
			name:   "authenticated for the apiserver's audience only",
			mutate: func(f *fakeCluster) { f.status.Audiences = []string{"https://kubernetes.default.svc.cluster.local"} },
			reason: reasonAudience,
			logMsg: `not valid for audience \"tally-server\"`,
		},
		{
			name:   "not a service account",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:node:node-a" },
			reason: reasonNotServiceAccount,
			logMsg: "is not a service account",
		},
		{
			name:   "malformed service account user",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:serviceaccount:" + testNS },
			reason: reasonNotServiceAccount,
			logMsg: "is not a service account",
		},
		{
			name:   "reviewed service account not allowed",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:serviceaccount:" + testNS + ":default" },
			reason: reasonServiceAccount,
			logMsg: "service account tally-system:default is not allowed",
		},
		{
			name:   "reviewed allowed name in another namespace",
			mutate: func(f *fakeCluster) { f.status.User.Username = "system:serviceaccount:default:" + testSA },
			reason: reasonServiceAccount,
			logMsg: "service account default:tally-agent is not allowed",
		},
		{
			name:   "no pod-name extra",
			mutate: func(f *fakeCluster) { delete(f.status.User.Extra, extraPodName) },
			reason: reasonNotPodBound,
			logMsg: "not bound to a pod: no " + extraPodName,
		},
		{
			name:   "no pod-uid extra",
			mutate: func(f *fakeCluster) { delete(f.status.User.Extra, extraPodUID) },
			reason: reasonNotPodBound,
			logMsg: "not bound to a pod: no " + extraPodUID,
		},
		{
			name:   "two pod names",
			mutate: func(f *fakeCluster) { f.status.User.Extra[extraPodName] = []string{testPod, "other"} },
			reason: reasonNotPodBound,
			logMsg: "2 values for " + extraPodName,
		},
		{
			name:   "empty pod uid",
			mutate: func(f *fakeCluster) { f.status.User.Extra[extraPodUID] = []string{""} },
			reason: reasonNotPodBound,
			logMsg: "1 values for " + extraPodUID,
		},
		{
			name:   "pod deleted",
			mutate: func(f *fakeCluster) { delete(f.pods, testNS+"/"+testPod) },
			reason: reasonPodGone,
			logMsg: `"pod":"tally-agent-x7k2p","pod_uid":"` + testPodUID + `"`,
		},
		{
			name: "pod recreated with the same name",
			mutate: func(f *fakeCluster) {
				f.pods[testNS+"/"+testPod].UID = "11111111-2222-4333-8444-555555555555"
			},
			reason: reasonPodRecreated,
			logMsg: `"pod_uid":"` + testPodUID + `","live_uid":"11111111-2222-4333-8444-555555555555"`,
		},
		{
			name:   "pod runs as another service account",
			mutate: func(f *fakeCluster) { f.pods[testNS+"/"+testPod].Spec.ServiceAccountName = "default" },
			reason: reasonPodServiceAccount,
			logMsg: `runs as service account \"default\"`,
		},
		{
			name:   "pod not scheduled",
			mutate: func(f *fakeCluster) { f.pods[testNS+"/"+testPod].Spec.NodeName = "" },
			reason: reasonPodNode,
			logMsg: "not scheduled",
		},
		{
			name:   "token bound to another node",
			mutate: func(f *fakeCluster) { f.status.User.Extra[extraNodeName] = []string{"node-b"} },
			reason: reasonPodNode,
			logMsg: "runs on node node-a, the token is bound to node node-b",
		},
		{
			name: "pod terminating",
			mutate: func(f *fakeCluster) {
				grace := int64(30)
				f.pods[testNS+"/"+testPod].DeletionTimestamp = &metav1.Time{Time: testNow.Add(20 * time.Second)}
				f.pods[testNS+"/"+testPod].DeletionGracePeriodSeconds = &grace
			},
			reason: reasonPodTerminating,
			logMsg: "terminating (deletion requested at 2026-12-01T11:59:50Z)",
		},
		{
			name:   "pod failed",
			mutate: func(f *fakeCluster) { f.pods[testNS+"/"+testPod].Status.Phase = corev1.PodFailed },
			reason: reasonPodFinished,
			logMsg: "finished (phase Failed)",
		},
		{
			name:   "node deleted",
			mutate: func(f *fakeCluster) { delete(f.nodes, testNode) },
			reason: reasonNodeGone,
			logMsg: `"node":"node-a","token_node_uid":"` + testNodeUID + `"`,
		},
		{
			name: "node recreated with the same name",
			mutate: func(f *fakeCluster) {
				f.nodes[testNode].UID = types.UID("99999999-2222-4333-8444-555555555555")
			},
			reason: reasonNodeRecreated,
			logMsg: `"token_node_uid":"` + testNodeUID + `","live_uid":"99999999-2222-4333-8444-555555555555"`,
		},
	}
}

func TestAttestRefusals(t *testing.T) {
	for _, tc := range refusalCases() {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster()
			tc.mutate(fc)
			cfg := testConfig(fc)
			log := withLog(&cfg)
			a, err := New(cfg)
			require.NoError(t, err)

			res, err := a.Attest(context.Background(), []byte(testToken))
			require.ErrorIs(t, err, attest.ErrDenied)
			assert.Zero(t, res)
			line := log.String()
			assert.Equal(t, 1, strings.Count(line, "\n"), "one log line per refusal: %s", line)
			assert.Contains(t, line, `"level":"INFO","msg":"k8s_psat attestation refused","reason":"`+tc.reason+`"`)
			assert.Contains(t, line, tc.logMsg)
			for _, s := range []string{err.Error(), line} {
				assert.NotContains(t, s, testToken)
				assert.NotContains(t, s, testPayload, "token payload")
			}
		})
	}
}

func TestAttestAPIFailures(t *testing.T) {
	apiErr := errors.New("connection refused")
	tests := []struct {
		name   string
		mutate func(*fakeCluster)
		errMsg string
	}{
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

			res, err := a.Attest(context.Background(), []byte(testToken))
			require.Error(t, err)
			assert.Zero(t, res)
			assert.NotErrorIs(t, err, attest.ErrDenied)
			assert.ErrorIs(t, err, apiErr)
			assert.Contains(t, err.Error(), tc.errMsg)
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, err.Error(), testPayload, "token payload in error")
		})
	}
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
