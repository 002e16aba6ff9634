package k8spsat

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
)

// junkTokens are attestation data an anonymous caller can send without
// holding any token of the cluster: the garbage, and tokens forged
// to look bound but wrong in what can be seen without the apiserver.
func junkTokens(t *testing.T) map[string]string {
	b64 := base64.RawURLEncoding.EncodeToString
	return map[string]string{
		"garbage":            "garbage-token",
		"empty":              "",
		"three dots of junk": "a.b.c",
		"binary":             "\x00\xff\xfe" + strings.Repeat("\x01", 64),
		"larger than 16 KiB": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Kubernetes["padding"] = strings.Repeat("x", MaxTokenSize)
		}),
		"alg none":                b64([]byte(`{"alg":"none"}`)) + "." + strings.Split(testToken, ".")[1] + ".",
		"HMAC signed":             mintToken(t, jose.HS256, nil),
		"JSON payload not claims": b64([]byte(`{"alg":"RS256"}`)) + "." + b64([]byte(`[1,2,3]`)) + "." + b64([]byte("sig")),
		"JWS JSON serialization":  `{"payload":"` + strings.Split(testToken, ".")[1] + `","signatures":[]}`,
		"wrong audience": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Audience = jwt.Audience{"https://kubernetes.default.svc"}
		}),
		"no audience": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) { c.Audience = nil }),
		"no issuer":   mintToken(t, jose.ES256, func(c *tokenClaimsJSON) { c.Issuer = "" }),
		"expired": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Expiry = jwt.NewNumericDate(testNow.Add(-2 * time.Minute))
		}),
		"no expiry": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) { c.Expiry = nil }),
		"not yet valid": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.NotBefore = jwt.NewNumericDate(testNow.Add(10 * time.Minute))
		}),
		"subject not a service account": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) { c.Subject = "system:node:node-a" }),
		"subject and claims disagree": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Subject = serviceAccountPrefix + testNS + ":other"
		}),
		"not bound to a pod": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) { delete(c.Kubernetes, "pod") }),
		"pod without uid": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Kubernetes["pod"] = map[string]any{"name": testPod}
		}),
		"service account not allowed": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Subject = serviceAccountPrefix + testNS + ":default"
			c.Kubernetes["serviceaccount"] = map[string]any{"name": "default", "uid": "u"}
		}),
		"allowed name in another namespace": mintToken(t, jose.ES256, func(c *tokenClaimsJSON) {
			c.Subject = serviceAccountPrefix + "default:" + testSA
			c.Kubernetes["namespace"] = "default"
		}),
	}
}

// TestAttackPSATJunkDoesNotReachAPIServer: the flood sends garbage
// tokens with valid CSRs; each cost a TokenReview, and together they used
// up the client's rate limit that real agents share. Now none of them
// reaches the apiserver: the same refusal, and not one call through the
// Cluster. Both with the fake cluster and with NewCluster on an HTTP
// apiserver that counts requests.
func TestAttackPSATJunkDoesNotReachAPIServer(t *testing.T) {
	api, restCfg := newFakeAPI(t)
	real, err := NewCluster(restCfg)
	require.NoError(t, err)
	for name, c := range map[string]Cluster{"fake cluster": newFakeCluster(), "NewCluster": real} {
		t.Run(name, func(t *testing.T) {
			counted := &countingCluster{Cluster: c}
			cfg := testConfig(counted)
			log := withLog(&cfg)
			a, err := New(cfg)
			require.NoError(t, err)
			before := api.requests()

			for junk, token := range junkTokens(t) {
				res, err := a.Attest(context.Background(), []byte(token))
				require.ErrorIs(t, err, attest.ErrDenied, junk)
				assert.Equal(t, errRefused, err, junk)
				assert.Zero(t, res, junk)
			}
			assert.Equal(t, [3]int{0, 0, 0}, counted.calls(), "TokenReviews, pod and node reads for junk")
			assert.Equal(t, before, api.requests(), "apiserver requests for junk")
			assert.NotContains(t, log.String(), testPayload)
			assert.Contains(t, log.String(), `"reason":"malformed"`)
			assert.Contains(t, log.String(), `"reason":"service_account_not_allowed"`)
			assert.Contains(t, log.String(), `"reason":"expired"`)

			// The counters count: the agent's token costs three calls, and a
			// second attestation on the same node two (the node is cached).
			_, err = a.Attest(context.Background(), []byte(testToken))
			require.NoError(t, err)
			assert.Equal(t, [3]int{1, 1, 1}, counted.calls())
			_, err = a.Attest(context.Background(), []byte(testToken))
			require.NoError(t, err)
			assert.Equal(t, [3]int{2, 2, 1}, counted.calls())
		})
	}
}

// TestAttackPSATRefusalHidesUIDs: an unauthenticated caller learned from
// the refusal which pods, nodes and UIDs exist and which service accounts
// are allowed. Now every refusal reads the same, and the reason with the
// names and UIDs goes to the server's log.
func TestAttackPSATRefusalHidesUIDs(t *testing.T) {
	secrets := []string{testPodUID, testNodeUID, testSAUID, testPod, testNode, testNS, testSA,
		"11111111-2222-4333-8444-555555555555", "99999999-2222-4333-8444-555555555555",
		"recreated", "terminating", "no longer", "exist", "default:", "audience", "kube-system"}
	check := func(t *testing.T, err error) {
		t.Helper()
		require.ErrorIs(t, err, attest.ErrDenied)
		assert.Equal(t, errRefused.Error(), err.Error())
		for _, s := range secrets {
			assert.NotContains(t, err.Error(), s)
		}
	}
	for _, tc := range refusalCases() {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster()
			tc.mutate(fc)
			cfg := testConfig(fc)
			log := withLog(&cfg)
			a, err := New(cfg)
			require.NoError(t, err)
			_, err = a.Attest(context.Background(), []byte(testToken))
			check(t, err)
			assert.Contains(t, log.String(), `"reason":"`+tc.reason+`"`, "the log says why")
		})
	}
	for junk, token := range junkTokens(t) {
		t.Run("junk "+junk, func(t *testing.T) {
			a, err := New(testConfig(newFakeCluster()))
			require.NoError(t, err)
			_, err = a.Attest(context.Background(), []byte(token))
			check(t, err)
		})
	}
}

// TestAttackPSATTerminatingPod: a pod whose deletion was requested, or that
// has finished, still holds a token the apiserver authenticates (for a
// pod being deleted, up to a minute past its deletion timestamp). Such an
// agent must not get a fresh identity; its replacement attests.
func TestAttackPSATTerminatingPod(t *testing.T) {
	grace := int64(30)
	tests := []struct {
		name   string
		mutate func(*corev1.Pod)
		reason string // "" = attests
	}{
		{name: "pending (the kubelet has not reported Running yet)", mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }},
		{name: "running", mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning }},
		{name: "terminating", reason: reasonPodTerminating, mutate: func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodRunning
			p.DeletionTimestamp = &metav1.Time{Time: testNow.Add(10 * time.Second)}
			p.DeletionGracePeriodSeconds = &grace
		}},
		{name: "terminating past its grace period", reason: reasonPodTerminating, mutate: func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodRunning
			p.DeletionTimestamp = &metav1.Time{Time: testNow.Add(-30 * time.Second)}
		}},
		{name: "failed", reason: reasonPodFinished, mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }},
		{name: "succeeded", reason: reasonPodFinished, mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster()
			tc.mutate(fc.pods[testNS+"/"+testPod])
			cfg := testConfig(fc)
			log := withLog(&cfg)
			a, err := New(cfg)
			require.NoError(t, err)
			res, err := a.Attest(context.Background(), []byte(testToken))
			if tc.reason == "" {
				require.NoError(t, err)
				assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod-eu/"+testNodeUID, res.AgentID.String())
				return
			}
			require.ErrorIs(t, err, attest.ErrDenied)
			assert.Contains(t, log.String(), `"reason":"`+tc.reason+`"`)
			assert.Contains(t, log.String(), `"pod_uid":"`+testPodUID+`"`)
		})
	}
}

// TestAttestNodeCache: a node is read once per NodeCacheTTL for tokens bound
// to its uid, and read again when the token names another uid (node
// recreated), when the token names none, and after the TTL.
func TestAttestNodeCache(t *testing.T) {
	ctx := context.Background()
	fc := newFakeCluster()
	counted := &countingCluster{Cluster: fc}
	clk := clocktesting.NewFakePassiveClock(testNow)
	cfg := testConfig(counted)
	cfg.Clock = clk
	a, err := New(cfg)
	require.NoError(t, err)
	nodeReads := func() int { return counted.calls()[2] }

	_, err = a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	_, err = a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, 1, nodeReads(), "second attestation on the node within the TTL")

	// Labels changed on the node: seen once the TTL has passed.
	fc.nodes[testNode].Labels["topology.kubernetes.io/zone"] = "eu-1b"
	clk.SetTime(testNow.Add(DefaultNodeCacheTTL - time.Second))
	res, err := a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, 1, nodeReads())
	assert.Contains(t, res.Selectors, sel("agent_node_label:topology.kubernetes.io/zone:eu-1a"), "cached labels")
	clk.SetTime(testNow.Add(DefaultNodeCacheTTL))
	res, err = a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, 2, nodeReads(), "TTL passed")
	assert.Contains(t, res.Selectors, sel("agent_node_label:topology.kubernetes.io/zone:eu-1b"))

	// The node is recreated under its name; the new pod's token names the new
	// uid, which the cache does not have: read, not served the old node.
	const newUID = "99999999-2222-4333-8444-555555555555"
	fc.nodes[testNode].UID = newUID
	fc.status.User.Extra[extraNodeUID] = []string{newUID}
	res, err = a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, 3, nodeReads())
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/prod-eu/"+newUID, res.AgentID.String())

	// An old token, bound to the node's previous uid, is refused after a read
	// even though the cache holds the node.
	fc.status.User.Extra[extraNodeUID] = []string{testNodeUID}
	_, err = a.Attest(ctx, []byte(testToken))
	require.ErrorIs(t, err, attest.ErrDenied)
	assert.Equal(t, 4, nodeReads())

	// A token without a node uid (older apiservers) always reads the node.
	delete(fc.status.User.Extra, extraNodeUID)
	for range 2 {
		_, err = a.Attest(ctx, []byte(testToken))
		require.NoError(t, err)
	}
	assert.Equal(t, 6, nodeReads())

	// A node deleted within the TTL is still served to a token bound to it
	// (its pod, read every time, is what must still exist)...
	fc.status.User.Extra[extraNodeUID] = []string{newUID}
	delete(fc.nodes, testNode)
	_, err = a.Attest(ctx, []byte(testToken))
	require.NoError(t, err)
	assert.Equal(t, 6, nodeReads())
	// ...but once a read finds it gone, it is dropped from the cache.
	fc.status.User.Extra[extraNodeUID] = []string{"77777777-2222-4333-8444-555555555555"}
	_, err = a.Attest(ctx, []byte(testToken))
	require.ErrorIs(t, err, attest.ErrDenied)
	_, cached := a.nodes.get(testNode)
	assert.False(t, cached)
	fc.status.User.Extra[extraNodeUID] = []string{newUID}
	_, err = a.Attest(ctx, []byte(testToken))
	require.ErrorIs(t, err, attest.ErrDenied)
	assert.Equal(t, 8, nodeReads())
}

func TestAttestNodeCacheDisabled(t *testing.T) {
	counted := &countingCluster{Cluster: newFakeCluster()}
	cfg := testConfig(counted)
	cfg.NodeCacheTTL = -1
	a, err := New(cfg)
	require.NoError(t, err)
	for range 3 {
		_, err = a.Attest(context.Background(), []byte(testToken))
		require.NoError(t, err)
	}
	assert.Equal(t, [3]int{3, 3, 3}, counted.calls())
}

func TestNodeCacheBounded(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(testNow)
	c := newNodeCache(time.Minute, clk)
	for i := range maxCachedNodes {
		c.put(string(rune(i)), cachedNode{uid: "u"})
	}
	c.put("one-too-many", cachedNode{uid: "u"})
	_, ok := c.get("one-too-many")
	assert.False(t, ok, "full of fresh nodes: not stored")
	clk.SetTime(testNow.Add(time.Minute))
	c.put("after-expiry", cachedNode{uid: "u"})
	_, ok = c.get("after-expiry")
	assert.True(t, ok, "expired nodes make room")
	assert.Len(t, c.nodes, 1)
}
