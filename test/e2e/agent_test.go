package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// uidSelector selects the test process itself.
func uidSelector() string { return fmt.Sprintf("uid:%d", os.Getuid()) }

func createEntries(t *testing.T, s *harness.Server, entries ...*tallyv1.Entry) []*tallyv1.Entry {
	t.Helper()
	resp, err := s.Admin(t).BatchCreateEntries(context.Background(), &tallyv1.BatchCreateEntriesRequest{Entries: entries})
	require.NoError(t, err)
	return resp.GetEntries()
}

// fetchOnceSynced fetches an X509-SVID from the agent at addr once it has
// the entry just created: the entry reaches the agent over its sync stream
// a moment after BatchCreateEntries returns, and until then the Workload
// API rightly answers PermissionDenied.
func fetchOnceSynced(t *testing.T, ctx context.Context, addr string) *x509svid.SVID {
	t.Helper()
	var (
		svid *x509svid.SVID
		err  error
	)
	require.Eventually(t, func() bool {
		svid, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
		return err == nil
	}, 30*time.Second, 20*time.Millisecond, "first SVID: %v", err)
	return svid
}

func TestWorkloadAPIWithGoSpiffe(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	createEntries(t, s,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: a.ID(t).String(), Hint: "web",
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}, DnsNames: []string{"web.example.org"}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/other-user", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:4242"}}},
	)
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr()))

	x509Source, err := workloadapi.NewX509Source(ctx, addr)
	require.NoError(t, err)
	defer x509Source.Close()
	svid, err := x509Source.GetX509SVID()
	require.NoError(t, err)
	require.Equal(t, "spiffe://example.org/web", svid.ID.String())
	require.Equal(t, []string{"web.example.org"}, svid.Certificates[0].DNSNames)
	require.Equal(t, "web", svid.Hint)
	_, _, err = x509svid.Verify(svid.Certificates, s.Bundle(t))
	require.NoError(t, err, "the SVID verifies against the server's bundle")

	all, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(a.Addr()))
	require.NoError(t, err)
	require.Len(t, all, 1, "only the entries whose selectors this process matches")

	bundleSource, err := workloadapi.NewBundleSource(ctx, addr)
	require.NoError(t, err)
	defer bundleSource.Close()
	b, err := bundleSource.GetX509BundleForTrustDomain(s.TrustDomain)
	require.NoError(t, err)
	require.ElementsMatch(t, s.Bundle(t).X509Authorities(), b.X509Authorities())
	jb, err := bundleSource.GetJWTBundleForTrustDomain(s.TrustDomain)
	require.NoError(t, err)
	require.Equal(t, len(s.Bundle(t).JWTAuthorities()), len(jb.JWTAuthorities()))

	jwtSource, err := workloadapi.NewJWTSource(ctx, addr)
	require.NoError(t, err)
	defer jwtSource.Close()
	token, err := jwtSource.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders"})
	require.NoError(t, err)
	require.Equal(t, "spiffe://example.org/web", token.ID.String())
	_, err = jwtsvid.ParseAndValidate(token.Marshal(), s.Bundle(t), []string{"orders"})
	require.NoError(t, err)
	again, err := jwtSource.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders"})
	require.NoError(t, err)
	require.Equal(t, token.Marshal(), again.Marshal(), "cached per (SPIFFE ID, audience) until half-life")

	validated, err := workloadapi.ValidateJWTSVID(ctx, token.Marshal(), "orders", workloadapi.WithAddr(a.Addr()))
	require.NoError(t, err)
	require.Equal(t, token.ID, validated.ID)
	_, err = workloadapi.ValidateJWTSVID(ctx, token.Marshal(), "payments", workloadapi.WithAddr(a.Addr()))
	require.Error(t, err, "wrong audience")
}

func TestWorkloadAPIRefusals(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/root-only", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:4242"}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)

	t.Run("no security header", func(t *testing.T) {
		stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		require.NoError(t, err)
		_, err = stream.Recv()
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		_, err = client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	})
	hdr := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	t.Run("a caller with no entry", func(t *testing.T) {
		stream, err := client.FetchX509SVID(hdr, &workload.X509SVIDRequest{})
		require.NoError(t, err)
		_, err = stream.Recv()
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
		_, err = client.FetchJWTSVID(hdr, &workload.JWTSVIDRequest{Audience: []string{"a"}})
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	})
	t.Run("junk bytes on the socket", func(t *testing.T) {
		for range 5 {
			raw, err := net.Dial("unix", a.Socket)
			require.NoError(t, err)
			_, _ = raw.Write([]byte("GET / HTTP/1.1\r\n\r\n\x00\xff\x13garbage"))
			raw.Close()
		}
		_, err := client.FetchJWTBundles(hdr, &workload.JWTBundlesRequest{})
		require.NoError(t, err, "the agent keeps serving")
	})
	t.Run("500 concurrent streams", func(t *testing.T) {
		createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/many", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
		var wg sync.WaitGroup
		errs := make(chan error, 500)
		for range 500 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stream, err := client.FetchX509SVID(hdr, &workload.X509SVIDRequest{})
				if err == nil {
					var resp *workload.X509SVIDResponse
					resp, err = stream.Recv()
					if err == nil && resp.GetSvids()[0].GetSpiffeId() != "spiffe://example.org/many" {
						err = fmt.Errorf("got %s", resp.GetSvids()[0].GetSpiffeId())
					}
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
	})
}

// TestOtherUsersGetOnlyTheirIdentities runs workloads as other uids.
func TestOtherUsersGetOnlyTheirIdentities(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/nobody", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:65534"}}})
	ctl := func(uid uint32) (string, error) {
		cmd := exec.Command(harness.Binaries(t)+"/tallyctl", "svid", "fetch", "x509", "--socket-path", a.Socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := ctl(65534)
	require.NoError(t, err, out)
	require.Contains(t, out, "spiffe://example.org/nobody")
	out, err = ctl(4243)
	require.Error(t, err)
	require.Contains(t, out, "PermissionDenied")
}

// TestGreeterMutualTLS runs the demo's two workloads as separate processes
// with separate identities.
func TestGreeterMutualTLS(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	greeter := harness.Binaries(t) + "/greeter"
	createEntries(t, s,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/greeter/server", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}, {Type: "unix", Value: "path:" + greeter}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/greeter/client", ParentId: a.ID(t).String(),
			Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:65534"}}},
	)
	addr := harness.FreeAddr(t)
	server := harness.StartProcess(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + a.Addr()}, 0,
		greeter, "server", "--addr", addr, "--peer-id", "spiffe://example.org/greeter/client")
	server.WaitFor(t, "listening on", 30*time.Second)
	client := harness.StartProcess(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + a.Addr()}, 65534,
		greeter, "client", "--addr", addr, "--peer-id", "spiffe://example.org/greeter/server", "--count", "3", "--every", "100ms")
	require.NoError(t, client.Wait(t, 30*time.Second), client.Output())
	require.Contains(t, client.Output(), "hello spiffe://example.org/greeter/client, this is spiffe://example.org/greeter/server")
	require.NotContains(t, client.Output(), "FAILED")
}

func TestAgentRestartDoesNotReattest(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	id := a.ID(t)
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/w", ParentId: id.String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fetchOnceSynced(t, ctx, a.Addr())

	a.Stop(t)
	a.Start(t) // same data dir; the join token is spent
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.Addr()))
	require.NoError(t, err)
	require.Equal(t, "spiffe://example.org/w", svid.ID.String())
	require.Equal(t, id, a.ID(t))
	require.Contains(t, a.Log(), "reusing the stored agent SVID")
	require.Equal(t, 1, strings.Count(s.Log(), `"action":"attest_agent"`), "attested once")
}

func TestServerRestartWhileStreaming(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/w", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr())))
	require.NoError(t, err)
	defer source.Close()

	s.Stop(t)
	// While the server is down the agent keeps serving from its cache: to
	// the open stream and to new callers.
	svid, err := source.GetX509SVID()
	require.NoError(t, err)
	require.True(t, time.Now().Before(svid.Certificates[0].NotAfter))
	fresh, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.Addr()))
	require.NoError(t, err)
	require.Equal(t, svid.ID, fresh.ID)

	snapshotsBefore := strings.Count(a.Log(), `"snapshot":true`)
	s.Start(t)
	// After the server is back, a new entry reaches the open stream, and
	// the agent resumed from its revision rather than taking a snapshot.
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/after", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	require.Eventually(t, func() bool {
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(a.Addr()))
		return err == nil && len(svids) == 2
	}, time.Minute, 100*time.Millisecond)
	require.Equal(t, snapshotsBefore, strings.Count(a.Log(), `"snapshot":true`), "no snapshot after reconnecting")
	require.Contains(t, a.Log(), `"msg":"entry sync applied","snapshot":false`)
}

func TestEntryChangesReachOpenStreams(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	a := harness.StartAgent(t, s, "")
	first := createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/one", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	updates := make(chan []*x509svid.SVID, 16)
	client := a.Client(t)
	go func() {
		_ = client.WatchX509Context(ctx, watcher{func(c *workloadapi.X509Context) { updates <- c.SVIDs }})
	}()
	ids := func(svids []*x509svid.SVID) []string {
		var out []string
		for _, s := range svids {
			out = append(out, s.ID.String())
		}
		return out
	}
	require.Equal(t, []string{"spiffe://example.org/one"}, ids(<-updates))
	createEntries(t, s, &tallyv1.Entry{SpiffeId: "spiffe://example.org/two", ParentId: a.ID(t).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: uidSelector()}}})
	require.ElementsMatch(t, []string{"spiffe://example.org/one", "spiffe://example.org/two"}, ids(<-updates))
	_, err := s.Admin(t).BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{first[0].GetId()}})
	require.NoError(t, err)
	require.Equal(t, []string{"spiffe://example.org/two"}, ids(<-updates))
}

type watcher struct {
	f func(*workloadapi.X509Context)
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.f(c) }
func (w watcher) OnX509ContextWatchError(error)                  {}
