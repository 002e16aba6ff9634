package workloadapi_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/unix"
	"github.com/tallyid/tally/workloadapi"
)

const waitFor = 20 * time.Second

func unixSel(v string) attest.Selector { return attest.Selector{Type: unix.Type, Value: v} }

// selfUID selects the test process (and its children) by the real unix
// attestor's unix:uid selector.
var selfUID = unixSel("uid:" + strconv.Itoa(os.Getuid()))

var (
	appID    = spiffeid.RequireFromString("spiffe://example.org/app")
	appExtID = spiffeid.RequireFromString("spiffe://example.org/app-ext")
	sleepID  = spiffeid.RequireFromString("spiffe://example.org/sleep")
)

// appEntries are two identities of the test process and one it does not
// have (its executable is not sleep).
func appEntries(t testing.TB, ca *testCA) []entry {
	return []entry{
		{selectors: []attest.Selector{selfUID}, svid: ca.x509SVID(t, appID, "internal")},
		{selectors: []attest.Selector{selfUID}, svid: ca.x509SVID(t, appExtID, "external")},
		{selectors: []attest.Selector{selfUID, unixSel("path:/usr/bin/sleep")}, svid: ca.x509SVID(t, sleepID, "")},
	}
}

// env is a Workload API server on a real Unix socket.
type env struct {
	ca     *testCA
	src    *testSource
	socket string
	addr   string // for go-spiffe: unix://<socket>
	reg    *prometheus.Registry
	logs   *logBuffer
	stop   func() error // ends Serve and returns its error
}

type envOption func(*workloadapi.Config)

func withAttestor(a workloadapi.Attestor) envOption {
	return func(c *workloadapi.Config) { c.Attestor = a }
}

// startServer serves src with the real unix attestor (unless replaced).
func startServer(t testing.TB, src *testSource, opts ...envOption) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "wlapi") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{
		ca:     src.ca,
		src:    src,
		socket: filepath.Join(dir, "agent.sock"),
		reg:    prometheus.NewRegistry(),
		logs:   &logBuffer{},
	}
	e.addr = "unix://" + e.socket
	cfg := workloadapi.Config{
		Source:   src,
		Attestor: unix.New(unix.Config{}),
		Logger:   slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:  workloadapi.NewMetrics(e.reg),
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := workloadapi.New(cfg)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, e.socket) }()
	waitListening(t, e.socket, done)
	var once sync.Once
	var serveErr error
	e.stop = func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() { require.NoError(t, e.stop()) })
	return e
}

// waitListening waits until a server accepts on socket, or fails the test
// if Serve returned (on done) first.
func waitListening(t testing.TB, socket string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("Serve returned before listening: %v", err)
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no server on %s", socket)
		}
	}
}

// dial returns a raw Workload API client.
func (e *env) dial(t testing.TB) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

// metric returns the value of a counter or gauge with the given labels.
func (e *env) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	families, err := e.reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

func requireCode(t testing.TB, err error, code codes.Code, msgContains string) {
	t.Helper()
	require.Error(t, err)
	st, ok := status.FromError(err)
	require.True(t, ok, "not a status error: %v", err)
	require.Equal(t, code, st.Code(), "status: %v", err)
	require.Contains(t, st.Message(), msgContains)
}

// logBuffer collects log output from concurrent handlers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestNewRequiresSourceAndAttestor(t *testing.T) {
	src := newTestSource(newTestCA(t))
	_, err := workloadapi.New(workloadapi.Config{Attestor: unix.New(unix.Config{})})
	require.Error(t, err)
	_, err = workloadapi.New(workloadapi.Config{Source: src})
	require.Error(t, err)
	srv, err := workloadapi.New(workloadapi.Config{Source: src, Attestor: unix.New(unix.Config{})})
	require.NoError(t, err)
	require.Error(t, srv.Serve(context.Background(), ""), "Serve needs a socket path")
}

func TestServe(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	base, err := os.MkdirTemp("", "wlapi")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	socket := filepath.Join(base, "run", "agent.sock") // the directory does not exist yet

	srv, err := workloadapi.New(workloadapi.Config{Source: src, Attestor: unix.New(unix.Config{})})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, socket) }()

	stream := openX509Stream(t, "unix://"+socket)
	_, err = stream.Recv()
	require.NoError(t, err)

	fi, err := os.Stat(filepath.Dir(socket))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	fi, err = os.Lstat(socket)
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket, fi.Mode().Type())
	assert.Equal(t, os.FileMode(0o777), fi.Mode().Perm(), "any uid may connect")

	// A second server on the same path is refused.
	other, err := workloadapi.New(workloadapi.Config{Source: src, Attestor: unix.New(unix.Config{})})
	require.NoError(t, err)
	require.ErrorContains(t, other.Serve(ctx, socket), "in use")

	// Stopping ends the open stream with Unavailable and Serve with nil.
	cancel()
	_, err = stream.Recv()
	requireCode(t, err, codes.Unavailable, "shutting down")
	require.NoError(t, <-done)
	_, err = os.Lstat(socket)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket is removed on stop")

	// A Server serves once.
	require.ErrorContains(t, srv.Serve(context.Background(), socket), "already started")
}

// openX509Stream opens a FetchX509SVID stream on addr, waiting for the server.
func openX509Stream(t *testing.T, addr string) grpc.ServerStreamingClient[workload.X509SVIDResponse] {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	stream, err := client.FetchX509SVID(withHeader(testContext(t)), &workload.X509SVIDRequest{}, grpc.WaitForReady(true))
	require.NoError(t, err)
	return stream
}

func TestServeSocketFile(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	dir, err := os.MkdirTemp("", "wlapi")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	serve := func(t *testing.T, path string) (stop func() error, done <-chan error) {
		srv, err := workloadapi.New(workloadapi.Config{Source: src, Attestor: unix.New(unix.Config{})})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		ch := make(chan error, 1)
		go func() { ch <- srv.Serve(ctx, path) }()
		return func() error { cancel(); return <-ch }, ch
	}

	t.Run("replaces a stale socket", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		require.NoError(t, err)
		stale.SetUnlinkOnClose(false)
		require.NoError(t, stale.Close())
		_, err = os.Lstat(path)
		require.NoError(t, err, "the stale socket file is there")

		stop, done := serve(t, path)
		waitListening(t, path, done)
		svids, err := spiffewl.FetchX509SVIDs(testContext(t), spiffewl.WithAddr("unix://"+path))
		require.NoError(t, err)
		require.Len(t, svids, 2)
		require.NoError(t, stop())
	})
	t.Run("refuses a socket in use", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		live, err := net.Listen("unix", path)
		require.NoError(t, err)
		defer live.Close()
		_, done := serve(t, path)
		require.ErrorContains(t, <-done, "in use")
	})
	t.Run("refuses to remove a file that is not a socket", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		require.NoError(t, os.WriteFile(path, []byte("keep me"), 0o600))
		_, done := serve(t, path)
		require.ErrorContains(t, <-done, "not a socket")
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, "keep me", string(b))
	})
}
