package bench

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
	"github.com/tallyid/tally/test/internal/k8s"
)

// BenchmarkPSATAttestation200: a DaemonSet of 200 agent pods, each bound to
// its own node in a real kube-apiserver, attests at once against a real
// tally-server with real bound tokens from the TokenRequest API (fresh for
// every round, so the apiserver's 10 s token cache never helps). Each round
// reports the time until all 200 hold an agent SVID and the apiserver
// requests the server made, read from the apiserver's own
// apiserver_request_total counter (/metrics) before and after the round.
//
// Rounds: client-go's default rate limit (the baseline); the defaults; again
// on the same server (node cache warm); while 100 junk AttestAgent calls of
// the shape (garbage token, valid CSR, no client certificate) are
// kept in flight; and while 100 forged tokens are (well-formed, the right
// audience and an allow-listed service account, signed by a key the cluster
// does not know), which only the apiserver can refuse.
//
// Every simulated agent and every junk caller dials from its own loopback
// address (127.0.0.x, 127.0.1.x), as 300 machines would: a bound per peer
// address sees 300 peers. An agent refused with Unavailable,
// ResourceExhausted or a server-side deadline retries with backoff, as
// tally-agent does (the retries column counts them).
func BenchmarkPSATAttestation200(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	const agents, junkCallers = 200, 100
	c := k8s.Start(b)
	ns := c.Namespace(b)
	c.ServiceAccount(b, ns, "tally-agent")
	pods := make([]*corev1.Pod, agents)
	nodeUIDs := make([]string, agents)
	for i := range agents {
		node := c.Node(b, fmt.Sprintf("node-%03d", i), map[string]string{"topology.kubernetes.io/zone": "z" + fmt.Sprint(i%3)})
		nodeUIDs[i] = string(node.UID)
		pods[i] = c.Pod(b, ns, fmt.Sprintf("tally-agent-%03d", i), "tally-agent", node.Name, nil, "agent")
	}
	tokens := func() []string {
		out := make([]string, agents)
		for i, pod := range pods {
			out[i] = c.Token(b, ns, "tally-agent", []string{"tally-server"}, pod, time.Hour)
		}
		return out
	}
	server := func(args ...string) *harness.Server {
		return harness.StartServer(b, append([]string{"--log-level", "info", "--psat-cluster", "c1",
			"--psat-kubeconfig", c.Kubeconfig, "--psat-service-account", ns + ":tally-agent",
			"--psat-node-label-key", "topology.kubernetes.io/zone"}, args...)...)
	}
	forged := psatForgedToken(b, c, ns, pods[0])

	var rows []string
	round := func(what string, s *harness.Server, flood string) {
		toks := tokens()
		bundle := s.Bundle(b)
		var stopFlood func() psatFloodResult
		if flood != "" {
			stopFlood = psatStartFlood(b, s, bundle, junkCallers, []byte(flood))
		}
		before := c.APIRequests(b)
		r := psatAttestAll(b, s, bundle, toks)
		var fr psatFloodResult
		if stopFlood != nil {
			fr = stopFlood()
		}
		// The apiserver counts a request when it has answered it; give the
		// last ones a moment to land.
		time.Sleep(200 * time.Millisecond)
		d := c.APIRequests(b).Sub(before)
		for i, id := range r.ids {
			require.Equal(b, "spiffe://example.org/tally/agent/k8s_psat/c1/"+nodeUIDs[i], id, "agent %d", i)
		}
		reviews, podGets, nodeGets := d["POST tokenreviews"], d["GET pods"], d["GET nodes"]
		rows = append(rows, fmt.Sprintf("%s\t%.2f\t%.2f\t%d\t%.0f\t%.0f\t%.0f\t%.2f\t%s", what,
			r.all.Seconds(), r.p50.Seconds(), r.retries,
			reviews, podGets, nodeGets, (reviews+podGets+nodeGets)/agents, fr))
	}

	s := server("--psat-kube-qps", "5", "--psat-kube-burst", "10")
	round("client-go default limit (5/s, burst 10): baseline", s, "")
	s.Stop(b)

	s = server()
	round("defaults (200/s, burst 400)", s, "")
	round("again, same server: node cache warm", s, "")
	s.Stop(b)

	s = server()
	round(fmt.Sprintf("%d junk calls in flight (garbage token)", junkCallers), s, "garbage-token")
	s.Stop(b)

	s = server()
	round(fmt.Sprintf("%d forged calls in flight (well-formed, bad signature)", junkCallers), s, forged)
	s.Stop(b)

	table(b, fmt.Sprintf("k8s_psat: %d agents on %d nodes attest at once (real kube-apiserver, TokenRequest tokens); "+
		"apiserver requests from its apiserver_request_total; flood rows: TokenReviews include the flood's", agents, agents),
		"round\tall attested (s)\tp50 (s)\tretries\tTokenReviews\tpod GETs\tnode GETs\tapiserver calls / attestation\tflood", rows)
}

type psatAttestResult struct {
	ids      []string
	all, p50 time.Duration // since the start: the last agent's, the median agent's
	retries  int
}

// psatAttestAll has one simulated agent per token attest at once, each from its
// own loopback address, and returns when all have an agent SVID.
func psatAttestAll(b *testing.B, s *harness.Server, bundle *spiffebundle.Bundle, tokens []string) psatAttestResult {
	b.Helper()
	type agent struct {
		conn *grpc.ClientConn
		csr  []byte
	}
	as := make([]agent, len(tokens))
	for i := range tokens {
		as[i] = agent{conn: psatDialFrom(b, s, bundle, net.IPv4(127, 0, byte(i/250), byte(2+i%250))), csr: harness.CSR(b, harness.NewKey(b), nil, nil)}
	}
	lat := make([]time.Duration, len(tokens))
	ids := make([]string, len(tokens))
	errs := make([]error, len(tokens))
	var retries atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			backoff := 100 * time.Millisecond
			for {
				resp, err := tallyv1.NewNodeClient(as[i].conn).AttestAgent(ctx, &tallyv1.AttestAgentRequest{
					AttestationType: "k8s_psat", AttestationData: []byte(tokens[i]), Csr: as[i].csr,
				})
				code := status.Code(err)
				if code == codes.Unavailable || code == codes.ResourceExhausted || (code == codes.DeadlineExceeded && ctx.Err() == nil) {
					retries.Add(1)
					select {
					case <-time.After(backoff):
					case <-ctx.Done():
						errs[i] = err
						return
					}
					backoff = min(2*backoff, 2*time.Second)
					continue
				}
				lat[i], ids[i], errs[i] = time.Since(start), resp.GetSpiffeId(), err
				return
			}
		}()
	}
	wg.Wait()
	for _, a := range as {
		a.conn.Close()
	}
	require.NoError(b, errors.Join(errs...))
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	return psatAttestResult{ids: ids, all: sorted[len(sorted)-1], p50: sorted[len(sorted)/2], retries: int(retries.Load())}
}

type psatFloodResult struct {
	calls, denied int64
	d             time.Duration
}

func (f psatFloodResult) String() string {
	if f.d == 0 {
		return "-"
	}
	return fmt.Sprintf("%d calls (%.0f/s), %d PermissionDenied", f.calls, float64(f.calls)/f.d.Seconds(), f.denied)
}

// psatStartFlood keeps n AttestAgent calls with token in flight, each caller on
// its own connection from its own loopback address with a valid CSR, until
// the returned stop is called. It returns once every caller has had a
// call answered.
func psatStartFlood(b *testing.B, s *harness.Server, bundle *spiffebundle.Bundle, n int, token []byte) (stop func() psatFloodResult) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var calls, denied atomic.Int64
	var wg, started sync.WaitGroup
	conns := make([]*grpc.ClientConn, n)
	for i := range n {
		conns[i] = psatDialFrom(b, s, bundle, net.IPv4(127, 0, 1, byte(1+i)))
		csr := harness.CSR(b, harness.NewKey(b), nil, nil)
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			first := true
			client := tallyv1.NewNodeClient(conns[i])
			for ctx.Err() == nil {
				_, err := client.AttestAgent(ctx, &tallyv1.AttestAgentRequest{AttestationType: "k8s_psat", AttestationData: token, Csr: csr})
				if ctx.Err() != nil {
					break
				}
				calls.Add(1)
				if status.Code(err) == codes.PermissionDenied {
					denied.Add(1)
				}
				if first {
					first = false
					started.Done()
				}
			}
			if first {
				started.Done()
			}
		}()
	}
	started.Wait()
	t0 := time.Now()
	c0 := calls.Load()
	d0 := denied.Load()
	return func() psatFloodResult {
		r := psatFloodResult{calls: calls.Load() - c0, denied: denied.Load() - d0, d: time.Since(t0)}
		cancel()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		return r
	}
}

// psatDialFrom connects to the server's Node API from local address ip, without
// a client certificate, as an agent that has not attested yet.
func psatDialFrom(b *testing.B, s *harness.Server, bundle *spiffebundle.Bundle, ip net.IP) *grpc.ClientConn {
	b.Helper()
	cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.ServerID()))
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	conn, err := grpc.NewClient(s.BindAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	require.NoError(b, err)
	return conn
}

// psatForgedToken is what an attacker who read the DaemonSet manifest can send:
// the claims of a real agent pod's token (audience, allow-listed service
// account, pod name and uid), signed with a key of its own. Only the
// apiserver can tell it from a real one.
func psatForgedToken(b *testing.B, c *k8s.Cluster, ns string, pod *corev1.Pod) string {
	b.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(b, err)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, nil)
	require.NoError(b, err)
	now := time.Now()
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: c.SAIssuer, Subject: "system:serviceaccount:" + ns + ":tally-agent", Audience: jwt.Audience{"tally-server"},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
	}).Claims(map[string]any{"kubernetes.io": map[string]any{
		"namespace":      ns,
		"serviceaccount": map[string]any{"name": "tally-agent", "uid": "00000000-0000-4000-8000-000000000000"},
		"pod":            map[string]any{"name": pod.Name, "uid": string(pod.UID)},
		"node":           map[string]any{"name": pod.Spec.NodeName, "uid": "00000000-0000-4000-8000-000000000001"},
	}}).Serialize()
	require.NoError(b, err)
	return token
}
