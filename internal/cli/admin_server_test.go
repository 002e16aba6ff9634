package cli

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest/jointoken"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/api"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/internal/peercred"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// testNow is the test server's (fake) clock: every time it issues is
// relative to it.
var testNow = time.Unix(1700000000, 0)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// testIssuer is the iss claim of the test server's JWT-SVIDs.
const testIssuer = "https://tally.example.org"

// adminServer is the real Admin API, wired as tally-server wires it
// (ca/server.Server.Run): a badger store in a temporary directory, a CA
// authority and a registry on it, all on a fake clock stopped at testNow,
// served by a gRPC server with the peer-credential transport credentials
// on a Unix socket of mode 0600. The components' Run loops (CA rotation,
// registry polling, value-log GC) are not started: on a stopped clock they
// would never act, and every Admin write catches the registry up itself.
// A unary interceptor records every request that reaches the server, so
// that tests can check what tallyctl sent.
type adminServer struct {
	socket    string
	clock     *testingclock.FakeClock
	store     *badgerstore.Store
	authority *ca.Authority
	registry  *registry.Registry
	admin     *api.Admin

	mu    sync.Mutex
	calls []recordedCall
}

type recordedCall struct {
	method string
	req    proto.Message
	// caller is what the server's peer credentials said of the caller.
	caller peercred.AuthInfo
}

// startAdmin starts an adminServer and returns it and its socket path. Every
// part stops when the test ends.
func startAdmin(t *testing.T) (*adminServer, string) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	clk := testingclock.NewFakeClock(testNow)
	dir := t.TempDir()

	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(dir, "store"), Logger: log, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	authority, err := ca.New(ctx, ca.Config{
		TrustDomain: testTD,
		KeyDir:      filepath.Join(dir, "keys"),
		Journal:     st,
		Clock:       clk,
		Logger:      log,
	})
	require.NoError(t, err)
	entries := registry.New(registry.Config{
		TrustDomain: testTD,
		Store:       st,
		Limits:      registry.Limits{MaxTTL: ca.DefaultCATTL / 6},
		Clock:       clk,
		Logger:      log,
	})
	require.NoError(t, entries.Load(ctx))
	admin := api.NewAdmin(api.AdminConfig{
		TrustDomain: testTD,
		Authority:   authority,
		Registry:    entries,
		Store:       st,
		TokenKey:    jointoken.TokenID,
		JWTIssuer:   testIssuer,
		Clock:       clk,
		Logger:      log,
	})
	s := &adminServer{clock: clk, store: st, authority: authority, registry: entries, admin: admin}

	// Not t.TempDir(): its path can exceed the 108 bytes of a socket address.
	sockDir, err := os.MkdirTemp("", "tallyctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s.socket = filepath.Join(sockDir, "admin.sock")
	lis, err := net.Listen("unix", s.socket)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(s.socket, 0o600))

	srv := grpc.NewServer(grpc.Creds(peercred.Credentials()), grpc.MaxRecvMsgSize(64<<20), grpc.UnaryInterceptor(s.record))
	tallyv1.RegisterAdminServer(srv, admin)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() { // before st.Close: cleanups run last first
		srv.Stop()
		<-done
	})
	return s, s.socket
}

// record is a unary interceptor that notes each request before serving it.
func (s *adminServer) record(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	caller, _ := peercred.FromContext(ctx)
	s.mu.Lock()
	s.calls = append(s.calls, recordedCall{method: path.Base(info.FullMethod), req: proto.Clone(req.(proto.Message)), caller: caller})
	s.mu.Unlock()
	return handler(ctx, req)
}

// requests returns the requests the server got for method, in order.
func (s *adminServer) requests(method string) []proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []proto.Message
	for _, c := range s.calls {
		if c.method == method {
			out = append(out, c.req)
		}
	}
	return out
}

// callers returns who made each call, in order.
func (s *adminServer) callers() []peercred.AuthInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []peercred.AuthInfo
	for _, c := range s.calls {
		out = append(out, c.caller)
	}
	return out
}

// callCount returns how many requests the server got.
func (s *adminServer) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// addEntries creates entries through the Admin service itself (not over the
// socket, so the calls are not recorded); output-only fields are cleared
// first. It returns the entries as stored.
func (s *adminServer) addEntries(t *testing.T, entries ...*tallyv1.Entry) []*tallyv1.Entry {
	t.Helper()
	req := &tallyv1.BatchCreateEntriesRequest{}
	for _, e := range entries {
		e = proto.Clone(e).(*tallyv1.Entry)
		e.Id, e.Revision, e.CreatedAt = "", 0, 0
		req.Entries = append(req.Entries, e)
	}
	resp, err := s.admin.BatchCreateEntries(context.Background(), req)
	require.NoError(t, err)
	return resp.Entries
}

func (s *adminServer) addEntry(t *testing.T, e *tallyv1.Entry) *tallyv1.Entry {
	t.Helper()
	return s.addEntries(t, e)[0]
}

// storedEntries returns every entry in the store, ordered by ID.
func (s *adminServer) storedEntries(t *testing.T) []*tallyv1.Entry {
	t.Helper()
	entries, err := s.store.ListEntries(context.Background(), store.EntryFilter{})
	require.NoError(t, err)
	out := make([]*tallyv1.Entry, 0, len(entries))
	for i := range entries {
		out = append(out, api.EntryToProto(&entries[i]))
	}
	return out
}

// addAgent stores a as an attested agent, as the Node API does when an agent
// attests.
func (s *adminServer) addAgent(t *testing.T, a *tallyv1.Agent) {
	t.Helper()
	sels := make([]store.Selector, 0, len(a.Selectors))
	for _, sel := range a.Selectors {
		sels = append(sels, store.Selector{Type: sel.Type, Value: sel.Value})
	}
	attested := time.Unix(a.AttestedAt, 0).UTC()
	require.NoError(t, s.store.PutAgent(context.Background(), store.Agent{
		ID:              a.SpiffeId,
		AttestationType: a.AttestationType,
		SerialNumber:    a.SerialNumber,
		ExpiresAt:       time.Unix(a.ExpiresAt, 0).UTC(),
		Selectors:       sels,
		Aliases:         a.Aliases,
		Banned:          a.Banned,
		AttestedAt:      attested,
		RenewedAt:       attested,
	}))
}

// startSilentServer listens on a Unix socket and accepts connections but
// never answers on them, like a hung server. It returns the socket path.
func startSilentServer(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tallyctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "admin.sock")
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		lis.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return socket
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
