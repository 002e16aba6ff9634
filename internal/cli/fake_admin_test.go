package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// testNow is the fake server's clock: every time it returns is relative to it.
var testNow = time.Unix(1700000000, 0)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// testCA is a self-signed X.509 authority for testTD.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"Tally test"}, CommonName: "test CA"},
		URIs:                  []*url.URL{testTD.ID().URL()},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key}
}

// sign certifies the public key of csr as an X509-SVID for id.
func (ca *testCA) sign(csr *x509.CertificateRequest, id string, dnsNames []string, ttl time.Duration) ([]byte, error) {
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		URIs:                  []*url.URL{u},
		DNSNames:              dnsNames,
		NotBefore:             testNow.Add(-time.Minute),
		NotAfter:              testNow.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
}

// fakeAdmin is an Admin server keeping entries and agents in maps and
// recording every request. ListEntries serves pages of pageSize entries in
// ID order, the page token being the index of the next entry.
type fakeAdmin struct {
	tallyv1.UnimplementedAdminServer

	ca       *testCA
	pageSize int

	mu      sync.Mutex
	calls   []recordedCall
	entries map[string]*tallyv1.Entry
	agents  map[string]*tallyv1.Agent
	nextID  int
	// errs makes the named method fail with the error.
	errs map[string]error
	// blockBundle makes GetBundle wait until its context ends.
	blockBundle bool
}

type recordedCall struct {
	method string
	req    proto.Message
}

// startFakeAdmin serves a fakeAdmin on a Unix socket in a fresh temporary
// directory, and returns it and the socket path. The server stops when the
// test ends.
func startFakeAdmin(t *testing.T) (*fakeAdmin, string) {
	t.Helper()
	fake := &fakeAdmin{
		ca:       newTestCA(t),
		pageSize: 2,
		entries:  map[string]*tallyv1.Entry{},
		agents:   map[string]*tallyv1.Agent{},
		errs:     map[string]error{},
	}
	// Not t.TempDir(): its path can exceed the 108 bytes of a socket address.
	dir, err := os.MkdirTemp("", "tallyctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "admin.sock")
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)

	srv := grpc.NewServer()
	tallyv1.RegisterAdminServer(srv, fake)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return fake, socket
}

func (f *fakeAdmin) record(method string, req proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, recordedCall{method: method, req: proto.Clone(req)})
	return f.errs[method]
}

// requests returns the requests the server got for method, in order.
func (f *fakeAdmin) requests(method string) []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []proto.Message
	for _, c := range f.calls {
		if c.method == method {
			out = append(out, c.req)
		}
	}
	return out
}

// callCount returns how many requests the server got.
func (f *fakeAdmin) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// failWith makes method fail with err from now on.
func (f *fakeAdmin) failWith(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
}

// blockGetBundle makes GetBundle wait for its context to end from now on.
func (f *fakeAdmin) blockGetBundle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blockBundle = true
}

func (f *fakeAdmin) addEntry(e *tallyv1.Entry) *tallyv1.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	e = proto.Clone(e).(*tallyv1.Entry)
	if e.Id == "" {
		f.nextID++
		e.Id = "entry-" + strconv.Itoa(f.nextID)
	}
	e.Revision = 1
	e.CreatedAt = testNow.Unix()
	f.entries[e.Id] = e
	return proto.Clone(e).(*tallyv1.Entry)
}

func (f *fakeAdmin) addAgent(a *tallyv1.Agent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.agents[a.SpiffeId] = a
}

func (f *fakeAdmin) BatchCreateEntries(_ context.Context, req *tallyv1.BatchCreateEntriesRequest) (*tallyv1.BatchCreateEntriesResponse, error) {
	if err := f.record("BatchCreateEntries", req); err != nil {
		return nil, err
	}
	for _, e := range req.Entries {
		if e.Id != "" || e.Revision != 0 || e.CreatedAt != 0 {
			return nil, status.Error(codes.InvalidArgument, "id, revision and created_at are output only")
		}
	}
	resp := &tallyv1.BatchCreateEntriesResponse{}
	for _, e := range req.Entries {
		resp.Entries = append(resp.Entries, f.addEntry(e))
	}
	return resp, nil
}

func (f *fakeAdmin) GetEntry(_ context.Context, req *tallyv1.GetEntryRequest) (*tallyv1.Entry, error) {
	if err := f.record("GetEntry", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.entries[req.Id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no entry %q", req.Id)
	}
	return proto.Clone(e).(*tallyv1.Entry), nil
}

func (f *fakeAdmin) ListEntries(_ context.Context, req *tallyv1.ListEntriesRequest) (*tallyv1.ListEntriesResponse, error) {
	if err := f.record("ListEntries", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.entries))
	for id := range f.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	start := 0
	if req.PageToken != "" {
		var err error
		if start, err = strconv.Atoi(req.PageToken); err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad page token")
		}
	}
	end := min(start+f.pageSize, len(ids))
	resp := &tallyv1.ListEntriesResponse{}
	for _, id := range ids[start:end] {
		resp.Entries = append(resp.Entries, proto.Clone(f.entries[id]).(*tallyv1.Entry))
	}
	if end < len(ids) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (f *fakeAdmin) UpdateEntry(_ context.Context, req *tallyv1.UpdateEntryRequest) (*tallyv1.Entry, error) {
	if err := f.record("UpdateEntry", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old, ok := f.entries[req.Entry.GetId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no entry %q", req.Entry.GetId())
	}
	e := proto.Clone(req.Entry).(*tallyv1.Entry)
	e.Revision = old.Revision + 1
	e.CreatedAt = old.CreatedAt
	f.entries[e.Id] = e
	return proto.Clone(e).(*tallyv1.Entry), nil
}

func (f *fakeAdmin) BatchDeleteEntries(_ context.Context, req *tallyv1.BatchDeleteEntriesRequest) (*tallyv1.BatchDeleteEntriesResponse, error) {
	if err := f.record("BatchDeleteEntries", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range req.Ids {
		if _, ok := f.entries[id]; !ok {
			return nil, status.Errorf(codes.NotFound, "no entry %q", id)
		}
	}
	for _, id := range req.Ids {
		delete(f.entries, id)
	}
	return &tallyv1.BatchDeleteEntriesResponse{}, nil
}

func (f *fakeAdmin) CreateJoinToken(_ context.Context, req *tallyv1.CreateJoinTokenRequest) (*tallyv1.CreateJoinTokenResponse, error) {
	if err := f.record("CreateJoinToken", req); err != nil {
		return nil, err
	}
	return &tallyv1.CreateJoinTokenResponse{
		Token:     "tok-123",
		ExpiresAt: testNow.Unix() + req.TtlSeconds,
		SpiffeId:  req.SpiffeId,
	}, nil
}

func (f *fakeAdmin) ListAgents(_ context.Context, req *tallyv1.ListAgentsRequest) (*tallyv1.ListAgentsResponse, error) {
	if err := f.record("ListAgents", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &tallyv1.ListAgentsResponse{}
	for _, a := range f.agents {
		resp.Agents = append(resp.Agents, a)
	}
	sort.Slice(resp.Agents, func(i, j int) bool { return resp.Agents[i].SpiffeId < resp.Agents[j].SpiffeId })
	return resp, nil
}

func (f *fakeAdmin) GetAgent(_ context.Context, req *tallyv1.GetAgentRequest) (*tallyv1.Agent, error) {
	if err := f.record("GetAgent", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.agents[req.SpiffeId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no agent %s", req.SpiffeId)
	}
	return a, nil
}

func (f *fakeAdmin) EvictAgent(_ context.Context, req *tallyv1.EvictAgentRequest) (*tallyv1.EvictAgentResponse, error) {
	if err := f.record("EvictAgent", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.agents[req.SpiffeId]; !ok {
		return nil, status.Errorf(codes.NotFound, "no agent %s", req.SpiffeId)
	}
	delete(f.agents, req.SpiffeId)
	return &tallyv1.EvictAgentResponse{}, nil
}

func (f *fakeAdmin) BanAgent(_ context.Context, req *tallyv1.BanAgentRequest) (*tallyv1.Agent, error) {
	if err := f.record("BanAgent", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.agents[req.SpiffeId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no agent %s", req.SpiffeId)
	}
	a = proto.Clone(a).(*tallyv1.Agent)
	a.Banned = true
	f.agents[a.SpiffeId] = a
	return a, nil
}

// spiffeBundle returns the fake's bundle as SPIFFE bundle JSON.
func (f *fakeAdmin) spiffeBundle() ([]byte, error) {
	b := spiffebundle.New(testTD)
	b.AddX509Authority(f.ca.cert)
	b.SetSequenceNumber(7)
	return b.Marshal()
}

func (f *fakeAdmin) GetBundle(ctx context.Context, req *tallyv1.GetBundleRequest) (*tallyv1.GetBundleResponse, error) {
	if err := f.record("GetBundle", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	block := f.blockBundle
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	doc, err := f.spiffeBundle()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &tallyv1.GetBundleResponse{
		SpiffeBundle:    doc,
		X509Authorities: [][]byte{f.ca.cert.Raw},
		Sequence:        7,
	}, nil
}

func (f *fakeAdmin) MintX509SVID(_ context.Context, req *tallyv1.MintX509SVIDRequest) (*tallyv1.MintX509SVIDResponse, error) {
	if err := f.record("MintX509SVID", req); err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.Csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr signature: %v", err)
	}
	ttl := time.Duration(req.TtlSeconds) * time.Second
	if ttl == 0 {
		ttl = time.Hour
	}
	der, err := f.ca.sign(csr, req.SpiffeId, req.DnsNames, ttl)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &tallyv1.MintX509SVIDResponse{CertChain: [][]byte{der}}, nil
}

func (f *fakeAdmin) MintJWTSVID(_ context.Context, req *tallyv1.MintJWTSVIDRequest) (*tallyv1.MintJWTSVIDResponse, error) {
	if err := f.record("MintJWTSVID", req); err != nil {
		return nil, err
	}
	return &tallyv1.MintJWTSVIDResponse{
		Token:     "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
		ExpiresAt: testNow.Unix() + 300,
	}, nil
}

// requireProto fails the test unless got is want, showing both as text.
func requireProto(t *testing.T, want, got proto.Message) {
	t.Helper()
	if !proto.Equal(want, got) {
		require.Equal(t, prototext.Format(want), prototext.Format(got))
		require.Fail(t, "messages differ", "want %v\ngot  %v", want, got)
	}
}

// result is what a tallyctl run printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs tallyctl against socket with args and stdin, as main does.
func runCLI(t *testing.T, socket, stdin string, args ...string) result {
	t.Helper()
	root := NewRootCommand()
	var stdout, stderr bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	if socket != "" {
		args = append([]string{"--socket", socket}, args...)
	}
	root.SetArgs(args)
	code := Execute(context.Background(), root)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}
