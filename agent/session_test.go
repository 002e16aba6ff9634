package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// testNode is the server's side of the Node API for Session tests: a real
// gRPC server over TLS on loopback whose answers the test sets. Agent SVIDs
// it signs are valid from the fake clock's now for svidTTL; its own
// certificate is valid for a day of real time, since TLS checks it against
// the real clock.
type testNode struct {
	tallyv1.UnimplementedNodeServer
	t       *testing.T
	clk     *clocktesting.FakeClock
	td      spiffeid.TrustDomain
	caKey   *ecdsa.PrivateKey
	ca      *x509.Certificate
	addr    string
	svidTTL time.Duration

	attestErr atomic.Pointer[error] // AttestAgent's answer; nil: sign
	renewErr  atomic.Pointer[error]
	reportErr atomic.Pointer[error]  // ReportSVIDs' answer; nil: OK
	mintErr   atomic.Pointer[string] // BatchNewX509SVID's error for every CSR; nil: sign
	attests   atomic.Int32
	renews    atomic.Int32
	calls     chan string // "attest", "renew", "sync:<since>"
	reports   chan reported
	// signer, if set, signs agent and workload SVIDs instead of ca.
	signer atomic.Pointer[testCA]
	// syncExtra, if set, goes with the first message of every stream:
	// its bundle and tainted keys.
	syncExtra atomic.Pointer[tallyv1.SyncEntriesResponse]

	mu      sync.Mutex
	streams []testStream // open SyncEntries streams
}

// testCA is a CA of a testNode.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// testStream is an open SyncEntries stream: send to end it, or to push a
// message on it.
type testStream struct {
	end  chan error
	push chan *tallyv1.SyncEntriesResponse
}

// reported is a ReportSVIDs call and when (on the fake clock) it came.
type reported struct {
	req *tallyv1.ReportSVIDsRequest
	at  time.Time
}

func startTestNode(t *testing.T, clk *clocktesting.FakeClock) *testNode {
	t.Helper()
	n := &testNode{t: t, clk: clk, td: spiffeid.RequireTrustDomainFromString("example.org"), svidTTL: 10 * time.Minute,
		calls: make(chan string, 100), reports: make(chan reported, 100)}
	var err error
	n.caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{n.td.ID().URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, n.caKey.Public(), n.caKey)
	require.NoError(t, err)
	n.ca, _ = x509.ParseCertificate(der)

	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serverID, _ := spiffeid.FromPath(n.td, "/tally/server")
	serverDER := n.sign(t, serverKey.Public(), serverID, now.Add(-time.Hour), now.Add(24*time.Hour))
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequestClientCert,
	})))
	tallyv1.RegisterNodeServer(gs, n)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n.addr = lis.Addr().String()
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return n
}

func (n *testNode) sign(t *testing.T, pub any, id spiffeid.ID, notBefore, notAfter time.Time) []byte {
	t.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	ca, key := n.ca, n.caKey
	if s := n.signer.Load(); s != nil {
		ca, key = s.cert, s.key
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, NotBefore: notBefore, NotAfter: notAfter, URIs: []*url.URL{id.URL()},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}, ca, pub, key)
	require.NoError(t, err)
	return der
}

// newCA makes another CA (with a subject, so that its leaves carry an
// AuthorityKeyId), valid for a day of real time.
func (n *testNode) newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test CA 2"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{n.td.ID().URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key}
}

// bundleJSON is the SPIFFE bundle of cas.
func (n *testNode) bundleJSON(t *testing.T, cas ...*x509.Certificate) []byte {
	t.Helper()
	raw, err := spiffebundle.FromX509Authorities(n.td, cas).Marshal()
	require.NoError(t, err)
	return raw
}

// BatchNewX509SVID signs every CSR for an hour, with the URIs it asks,
// or refuses it with mintErr.
func (n *testNode) BatchNewX509SVID(_ context.Context, req *tallyv1.BatchNewX509SVIDRequest) (*tallyv1.BatchNewX509SVIDResponse, error) {
	resp := &tallyv1.BatchNewX509SVIDResponse{}
	for _, r := range req.GetRequests() {
		csr, err := x509.ParseCertificateRequest(r.GetCsr())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		id, err := spiffeid.FromURI(csr.URIs[0])
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if e := n.mintErr.Load(); e != nil {
			resp.Results = append(resp.Results, &tallyv1.X509SVIDResult{EntryId: r.GetEntryId(), Error: *e})
			continue
		}
		now := n.clk.Now()
		resp.Results = append(resp.Results, &tallyv1.X509SVIDResult{EntryId: r.GetEntryId(),
			CertChain: [][]byte{n.sign(n.t, csr.PublicKey, id, now.Add(-10*time.Second), now.Add(time.Hour))}})
	}
	return resp, nil
}

// ReportSVIDs records the report and answers reportErr.
func (n *testNode) ReportSVIDs(_ context.Context, req *tallyv1.ReportSVIDsRequest) (*tallyv1.ReportSVIDsResponse, error) {
	n.reports <- reported{req: req, at: n.clk.Now()}
	if err := n.reportErr.Load(); err != nil {
		return nil, *err
	}
	return &tallyv1.ReportSVIDsResponse{}, nil
}

func (n *testNode) agentSVID(csrDER []byte) ([][]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id, _ := spiffeid.FromPath(n.td, "/tally/agent/test/node-1")
	now := n.clk.Now()
	return [][]byte{n.sign(n.t, csr.PublicKey, id, now.Add(-time.Second), now.Add(n.svidTTL))}, nil
}

func (n *testNode) bundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: n.ca.Raw})
}

func (n *testNode) AttestAgent(_ context.Context, req *tallyv1.AttestAgentRequest) (*tallyv1.AttestAgentResponse, error) {
	n.attests.Add(1)
	fail := n.attestErr.Load() // read before the test hears of the call, which may then change it
	n.calls <- "attest"
	if fail != nil {
		return nil, *fail
	}
	chain, err := n.agentSVID(req.GetCsr())
	if err != nil {
		return nil, err
	}
	bundle, err := spiffebundle.FromX509Authorities(n.td, []*x509.Certificate{n.ca}).Marshal()
	if err != nil {
		return nil, err
	}
	return &tallyv1.AttestAgentResponse{SpiffeId: "spiffe://example.org/tally/agent/test/node-1", SvidChain: chain, Bundle: bundle}, nil
}

func (n *testNode) RenewAgent(_ context.Context, req *tallyv1.RenewAgentRequest) (*tallyv1.RenewAgentResponse, error) {
	n.renews.Add(1)
	fail := n.renewErr.Load() // as AttestAgent
	n.calls <- "renew"
	if fail != nil {
		return nil, *fail
	}
	chain, err := n.agentSVID(req.GetCsr())
	if err != nil {
		return nil, err
	}
	return &tallyv1.RenewAgentResponse{SvidChain: chain}, nil
}

// SyncEntries sends a snapshot of one entry, e1 (spiffe://example.org/w
// for unix uid:1), at revision 1 or, resuming, no change at since; with
// syncExtra's bundle and tainted keys. Then it sends what the test pushes
// until the test ends it (endStreams).
func (n *testNode) SyncEntries(req *tallyv1.SyncEntriesRequest, stream tallyv1.Node_SyncEntriesServer) error {
	since := req.GetSinceRevision()
	n.calls <- "sync:" + big.NewInt(int64(since)).String()
	first := &tallyv1.SyncEntriesResponse{Revision: since}
	if since == 0 {
		first = &tallyv1.SyncEntriesResponse{Revision: 1, Snapshot: true, Upserts: []*tallyv1.Entry{{
			Id: "e1", SpiffeId: "spiffe://example.org/w", ParentId: "spiffe://example.org/tally/agent/test/node-1",
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}}, Revision: 1,
		}}}
	}
	if x := n.syncExtra.Load(); x != nil {
		first.Bundle, first.TaintedX509Ids = x.GetBundle(), x.GetTaintedX509Ids()
	}
	if err := stream.Send(first); err != nil {
		return err
	}
	ts := testStream{end: make(chan error, 1), push: make(chan *tallyv1.SyncEntriesResponse, 10)}
	n.mu.Lock()
	n.streams = append(n.streams, ts)
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.streams = slices.DeleteFunc(n.streams, func(o testStream) bool { return o.end == ts.end })
	}()
	for {
		select {
		case err := <-ts.end:
			return err
		case m := <-ts.push:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

// endStreams ends every open SyncEntries stream with err.
func (n *testNode) endStreams(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.streams {
		s.end <- err
	}
	n.streams = nil
}

// push sends m on every open SyncEntries stream.
func (n *testNode) push(m *tallyv1.SyncEntriesResponse) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.streams {
		s.push <- m
	}
}

// openStreams is how many SyncEntries streams are open.
func (n *testNode) openStreams() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.streams)
}

func (n *testNode) next(t *testing.T) string {
	t.Helper()
	select {
	case c := <-n.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no call to the node API")
		return ""
	}
}

func failWith(code codes.Code, msg string) *error {
	err := status.Error(code, msg)
	return &err
}

// openTestSession opens a Session against n with a data dir of its own and
// the node's CA as its bootstrap bundle.
func openTestSession(t *testing.T, n *testNode, dir string) *Session {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	require.NoError(t, os.WriteFile(bundle, n.bundlePEM(), 0o644))
	s, err := OpenSession(SessionConfig{
		TrustDomain: n.td, ServerAddress: n.addr, DataDir: dir, TrustBundle: bundle,
		Credential: staticCredential("token"), Clock: n.clk,
	})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

type staticCredential string

func (staticCredential) Type() string                           { return "test" }
func (c staticCredential) Data(context.Context) ([]byte, error) { return []byte(c), nil }

// waitTimer waits until the session is parked on the fake clock.
func waitTimer(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	require.Eventually(t, clk.HasWaiters, 10*time.Second, time.Millisecond)
}

func TestSessionAttestRetriesWithBackoff(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	n.attestErr.Store(failWith(codes.Unavailable, "apiserver down"))
	s := openTestSession(t, n, "")
	started := make(chan error, 1)
	go func() { started <- s.Start(context.Background()) }()

	require.Equal(t, "attest", n.next(t))
	for _, wait := range []time.Duration{time.Second, 2 * time.Second} {
		waitTimer(t, clk)
		clk.Step(wait / 2) // jitter shortens a wait by at most a fifth
		select {
		case c := <-n.calls:
			t.Fatalf("%s before the backoff of %s", c, wait)
		case <-time.After(50 * time.Millisecond):
		}
		clk.Step(wait / 2)
		require.Equal(t, "attest", n.next(t), "retried after %s", wait)
	}
	n.attestErr.Store(nil)
	waitTimer(t, clk)
	clk.Step(4 * time.Second)
	require.Equal(t, "attest", n.next(t))
	require.NoError(t, <-started)
	require.Equal(t, "spiffe://example.org/tally/agent/test/node-1", s.AgentID())
	require.EqualValues(t, 4, n.attests.Load())
}

func TestSessionRenewsBeforeHalfLife(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	s := openTestSession(t, n, "")
	require.NoError(t, s.Start(context.Background()))
	require.Equal(t, "attest", n.next(t))
	first, _ := s.id.current()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, newSyncSink(t)) }()
	require.Equal(t, "sync:0", n.next(t))

	waitTimer(t, clk)
	clk.Step(3*time.Minute + 30*time.Second) // 35 % of 10 min: before any renewal time
	select {
	case c := <-n.calls:
		t.Fatalf("%s at 35 %% of the SVID's life", c)
	case <-time.After(50 * time.Millisecond):
	}
	clk.Step(90 * time.Second) // 50 %
	require.Equal(t, "renew", n.next(t))
	require.Eventually(t, func() bool {
		now, _ := s.id.current()
		return now.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	}, 10*time.Second, time.Millisecond, "the renewed SVID replaces the first")
	require.Equal(t, "sync:1", n.next(t), "the entry stream moves to the connection made with the new SVID, resuming")
	require.EqualValues(t, 1, n.attests.Load())
	cancel()
	require.NoError(t, <-done)
}

func TestSessionReattestsWhenTheServerRefusesItsSVID(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	s := openTestSession(t, n, "")
	require.NoError(t, s.Start(context.Background()))
	require.Equal(t, "attest", n.next(t))
	n.renewErr.Store(failWith(codes.PermissionDenied, "agent evicted"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx, newSyncSink(t)) }()
	require.Equal(t, "sync:0", n.next(t))
	waitTimer(t, clk)
	clk.Step(5 * time.Minute)
	require.Equal(t, "renew", n.next(t))
	require.Equal(t, "attest", n.next(t), "refused: it attests again rather than retrying the renewal")
	require.EqualValues(t, 2, n.attests.Load())
}

func TestSessionReattestsWithAnExpiredStoredSVID(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	dir := t.TempDir()
	first := openTestSession(t, n, dir)
	require.NoError(t, first.Start(context.Background()))
	require.Equal(t, "attest", n.next(t))
	first.Close()

	// A restart while the SVID is valid reuses it.
	again := openTestSession(t, n, dir)
	require.NoError(t, again.Start(context.Background()))
	select {
	case c := <-n.calls:
		t.Fatalf("%s: a valid stored SVID is reused", c)
	case <-time.After(50 * time.Millisecond):
	}
	again.Close()

	clk.Step(n.svidTTL + time.Second) // the agent was down longer than the SVID's life
	restarted := openTestSession(t, n, dir)
	require.NoError(t, restarted.Start(context.Background()))
	require.Equal(t, "attest", n.next(t), "an expired stored SVID: attest again")
	require.EqualValues(t, 2, n.attests.Load())
}

func TestSessionSyncResumesFromTheLastRevision(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	s := openTestSession(t, n, "")
	require.NoError(t, s.Start(context.Background()))
	require.Equal(t, "attest", n.next(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx, newSyncSink(t)) }()
	require.Equal(t, "sync:0", n.next(t))

	require.Eventually(t, func() bool { n.mu.Lock(); defer n.mu.Unlock(); return len(n.streams) == 1 }, 10*time.Second, time.Millisecond)
	n.endStreams(status.Error(codes.Unavailable, "server restarting"))
	// The retry waits up to 500 ms on the fake clock, beside the renewal
	// timer: step until the stream is opened again (well before renewal).
	var call string
	for i := 0; call == "" && i < 100; i++ {
		clk.Step(100 * time.Millisecond)
		select {
		case call = <-n.calls:
		case <-time.After(20 * time.Millisecond):
		}
	}
	require.Equal(t, "sync:1", call, "after a broken stream: the changes since revision 1, not a snapshot")
}

// newSyncSink is a Cache that takes what the session applies.
func newSyncSink(t *testing.T) *Cache {
	t.Helper()
	c := NewCache(CacheConfig{Minter: failingMinter{}, Clock: clocktesting.NewFakeClock(time.Now())})
	return c
}
