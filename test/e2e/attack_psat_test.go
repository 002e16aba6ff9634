package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyid/tally/test/internal/k8s"
)

// psatAPICalls is what the tally-server asked the apiserver, by the
// apiserver's own apiserver_request_total, since before.
func psatAPICalls(t *testing.T, c *k8s.Cluster, before k8s.APIRequests) (reviews, pods, nodes float64) {
	t.Helper()
	d := c.APIRequests(t).Sub(before)
	return d["POST tokenreviews"], d["GET pods"], d["GET nodes"]
}

// TestAttackPSATJunkDoesNotReachAPIServer: anonymous AttestAgent calls with
// a garbage token and a valid CSR each cost a TokenReview, and 100 of them
// in flight used up the Kubernetes client's rate limit every agent shares.
// Now junk, and real tokens that are visibly not for this server, are
// refused PermissionDenied without a single apiserver request.
func TestAttackPSATJunkDoesNotReachAPIServer(t *testing.T) {
	e := startK8sEnv(t)
	c := e.cluster
	c.ServiceAccount(t, e.ns, "other")
	otherPod := c.Pod(t, e.ns, "other-1", "other", e.node.Name, nil, "x")
	b64 := base64.RawURLEncoding.EncodeToString
	junk := map[string]string{
		"garbage (the issue's flood)":                  "garbage-token",
		"not a JWT":                                    "not-a-jwt",
		"three segments of junk":                       "aaaa.bbbb.cccc",
		"alg none":                                     b64([]byte(`{"alg":"none"}`)) + "." + b64([]byte(`{"aud":["tally-server"]}`)) + ".",
		"larger than 16 KiB":                           strings.Repeat("eyJhbGciOiJSUzI1NiJ9", 1000),
		"real token, wrong audience":                   c.Token(t, e.ns, "tally-agent", []string{"someone-else"}, e.agentPod, time.Hour),
		"real token, unbound":                          c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, nil, time.Hour),
		"real token, service account not allow-listed": c.Token(t, e.ns, "other", []string{"tally-server"}, otherPod, time.Hour),
		"expired token":                                forgeExpiredToken(t, c, e),
	}
	before := c.APIRequests(t)
	for name, token := range junk {
		for range 5 {
			_, err := e.server.Attest(t, "k8s_psat", []byte(token))
			code := status.Code(err)
			if len(token) > 16<<10 && (code == codes.InvalidArgument || code == codes.ResourceExhausted) {
				continue // refused by a message-size limit before the attestor: fine too
			}
			require.Equal(t, codes.PermissionDenied, code, "%s: %v", name, err)
		}
	}
	// What the prefilter cannot tell from a real token, a forgery with every
	// claim right, costs one TokenReview (the apiserver refuses it); the
	// agent's own token a TokenReview, a pod and a node read. Had any junk
	// reached the apiserver, there would be more.
	_, err := e.server.Attest(t, "k8s_psat", []byte(forgedSignatureToken(t, e)))
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	_, err = e.server.Attest(t, "k8s_psat", []byte(e.agentToken(t)))
	require.NoError(t, err)
	want := []float64{2, 1, 1}
	var got []float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// The apiserver counts a request once it has answered it.
		reviews, pods, nodes := psatAPICalls(t, c, before)
		if got = []float64{reviews, pods, nodes}; slices.Equal(got, want) || time.Now().After(deadline) {
			break
		}
	}
	require.Equal(t, want, got, "TokenReviews, pod GETs and node GETs")
	require.Contains(t, e.server.Log(), `"reason":"malformed"`, "junk is logged at debug level")
	require.Contains(t, e.server.Log(), `"reason":"service_account_not_allowed"`)
	require.NotContains(t, e.server.Log(), "eyJhbGciOiJSUzI1NiJ9eyJh", "no token in the server log")
}

// TestAttackPSATRefusalHidesUIDs: an unauthenticated caller was told, in
// the refusal, the pod's and the node's live UIDs, the names, and which
// service accounts may attest. Now every refusal reads the same; the
// server log has the reason and the UIDs.
func TestAttackPSATRefusalHidesUIDs(t *testing.T) {
	t.Parallel()
	e := startK8sEnv(t)
	c := e.cluster
	c.ServiceAccount(t, e.ns, "other")
	otherPod := c.Pod(t, e.ns, "other-1", "other", e.node.Name, nil, "x")

	// A pod recreated under its name: the old token names the old UID.
	old := c.Pod(t, e.ns, "again-1", "tally-agent", e.node.Name, nil, "agent")
	oldToken := c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, old, time.Hour)
	c.DeletePod(t, old)
	again := c.Pod(t, e.ns, "again-1", "tally-agent", e.node.Name, nil, "agent")
	// A node recreated under its name while its pod stayed (no pod GC here).
	nodeB := c.Node(t, e.ns+"-node-b", nil)
	onB := c.Pod(t, e.ns, "on-b", "tally-agent", e.ns+"-node-b", nil, "agent")
	onBToken := c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, onB, time.Hour)
	require.NoError(t, c.Client.CoreV1().Nodes().Delete(context.Background(), e.ns+"-node-b", metav1.DeleteOptions{}))
	nodeB2 := c.Node(t, e.ns+"-node-b", nil)
	require.NotEqual(t, nodeB.UID, nodeB2.UID)
	// A terminating pod.
	leaving := c.Pod(t, e.ns, "leaving-1", "tally-agent", e.node.Name, nil, "agent")
	leavingToken := c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, leaving, time.Hour)
	c.TerminatePod(t, leaving)

	sa, err := c.Client.CoreV1().ServiceAccounts(e.ns).Get(context.Background(), "tally-agent", metav1.GetOptions{})
	require.NoError(t, err)
	hidden := []string{e.ns, e.node.Name, e.ns + "-node-b", "tally-agent", "other", string(sa.UID), string(e.node.UID),
		string(old.UID), string(again.UID), string(nodeB.UID), string(nodeB2.UID), string(onB.UID), string(leaving.UID),
		"recreated", "terminating", "exist", "uid"}
	cases := []struct {
		name, token, reason, logged string
	}{
		// The apiserver itself refuses this one (it checks the bound pod's UID).
		{"recreated pod", oldToken, "not_authenticated", string(old.UID)},
		{"recreated node", onBToken, "node_recreated", string(nodeB2.UID)},
		{"terminating pod", leavingToken, "pod_terminating", string(leaving.UID)},
		{"service account not allow-listed", c.Token(t, e.ns, "other", []string{"tally-server"}, otherPod, time.Hour),
			"service_account_not_allowed", e.ns + ":other"},
	}
	var first string
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.server.Attest(t, "k8s_psat", []byte(tc.token))
			require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
			msg := status.Convert(err).Message()
			for _, s := range hidden {
				assert.NotContains(t, msg, s)
			}
			if first == "" {
				first = msg
			}
			assert.Equal(t, first, msg, "every refusal reads the same")
			require.Eventually(t, func() bool {
				for _, line := range strings.Split(e.server.Log(), "\n") {
					if strings.Contains(line, `"reason":"`+tc.reason+`"`) && strings.Contains(line, tc.logged) {
						return true
					}
				}
				return false
			}, 10*time.Second, 50*time.Millisecond, "the server log has the reason and %s", tc.logged)
		})
	}
}

// TestAttackPSATTerminatingPod: the apiserver still authenticates the token
// of a pod whose deletion was requested (until a minute past its deletion
// timestamp) and of a pod that has finished, and Tally gave such an agent a
// fresh identity. Now it refuses; the pod replacing it attests.
func TestAttackPSATTerminatingPod(t *testing.T) {
	t.Parallel()
	e := startK8sEnv(t)
	c := e.cluster
	review := func(t *testing.T, token string) authenticationv1.TokenReviewStatus {
		tr, err := c.Client.AuthenticationV1().TokenReviews().Create(context.Background(), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{"tally-server"}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		return tr.Status
	}
	cases := []struct {
		name   string
		end    func(*testing.T, *corev1.Pod)
		reason string
	}{
		{"terminating", func(t *testing.T, p *corev1.Pod) { c.TerminatePod(t, p) }, "pod_terminating"},
		{"failed", func(t *testing.T, p *corev1.Pod) { c.SetPodPhase(t, p, corev1.PodFailed) }, "pod_finished"},
		{"succeeded", func(t *testing.T, p *corev1.Pod) { c.SetPodPhase(t, p, corev1.PodSucceeded) }, "pod_finished"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := c.Pod(t, e.ns, "agent-"+tc.name, "tally-agent", e.node.Name, nil, "agent")
			token := c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, pod, time.Hour)
			tc.end(t, pod)
			st := review(t, token)
			require.True(t, st.Authenticated, "the apiserver still authenticates the token: %s", st.Error)

			_, err := e.server.Attest(t, "k8s_psat", []byte(token))
			require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
			require.Eventually(t, func() bool {
				return strings.Contains(e.server.Log(), `"reason":"`+tc.reason+`"`) && strings.Contains(e.server.Log(), string(pod.UID))
			}, 10*time.Second, 50*time.Millisecond)

			// Its replacement on the same node attests, as the same node.
			next := c.Pod(t, e.ns, "agent-"+tc.name+"-next", "tally-agent", e.node.Name, nil, "agent")
			a, err := e.server.Attest(t, "k8s_psat", []byte(c.Token(t, e.ns, "tally-agent", []string{"tally-server"}, next, time.Hour)))
			require.NoError(t, err)
			require.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/c1/"+string(e.node.UID), a.ID.String())
		})
	}
}

// forgedSignatureToken has every claim of a real bound token of the agent
// pod, signed by a key the cluster does not know: only the apiserver can
// tell it from a real one.
func forgedSignatureToken(t *testing.T, e *k8sEnv) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, nil)
	require.NoError(t, err)
	now := time.Now()
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: e.cluster.SAIssuer, Subject: "system:serviceaccount:" + e.ns + ":tally-agent", Audience: jwt.Audience{"tally-server"},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
	}).Claims(map[string]any{"kubernetes.io": map[string]any{
		"namespace":      e.ns,
		"serviceaccount": map[string]any{"name": "tally-agent", "uid": "00000000-0000-4000-8000-000000000000"},
		"pod":            map[string]any{"name": e.agentPod.Name, "uid": string(e.agentPod.UID)},
	}}).Serialize()
	require.NoError(t, err)
	return token
}
