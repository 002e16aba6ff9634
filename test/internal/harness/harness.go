// Package harness runs real Tally processes for end-to-end tests: the
// server binary with its own data dir, ports and admin socket, and clients
// for its APIs.
package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries returns the directory holding tally-server and tallyctl: $TALLY_BIN
// if set (make test builds them), else they are built once into the
// repository's git-ignored .cache/bin.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("TALLY_BIN"); d != "" {
			binDir = d
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..", "..")
		binDir = filepath.Join(root, ".cache", "bin")
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/...", "./examples/...")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binDir
}

// FreeAddr returns a loopback address with a port that was free just now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// Server is a tally-server process.
type Server struct {
	TrustDomain spiffeid.TrustDomain
	Dir         string
	AdminSocket string
	BindAddr    string
	HTTPAddr    string
	HealthAddr  string
	WebAddr     string
	// Args are extra flags for `tally-server run`.
	Args []string

	bin     string
	cmd     *exec.Cmd
	log     *lockedBuffer
	done    chan struct{}
	started bool // ready once: its addresses are known to others
}

// NewServer prepares a server in a fresh temp dir; Start runs it.
func NewServer(t testing.TB, args ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	return &Server{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Dir:         dir,
		AdminSocket: filepath.Join(dir, "admin.sock"),
		BindAddr:    FreeAddr(t),
		HTTPAddr:    FreeAddr(t),
		HealthAddr:  FreeAddr(t),
		WebAddr:     FreeAddr(t),
		Args:        args,
		bin:         Binaries(t),
	}
}

// StartServer prepares and starts a server and stops it when the test ends.
func StartServer(t testing.TB, args ...string) *Server {
	s := NewServer(t, args...)
	s.Start(t)
	return s
}

// Command returns the `tally-server run` command line of this server.
func (s *Server) Command() []string {
	return append([]string{filepath.Join(s.bin, "tally-server"), "run",
		"--trust-domain", s.TrustDomain.Name(),
		"--data-dir", filepath.Join(s.Dir, "data"),
		"--admin-socket", s.AdminSocket,
		"--bind-address", s.BindAddr,
		"--http-address", s.HTTPAddr,
		"--health-address", s.HealthAddr,
		"--web-address", s.WebAddr,
		"--log-level", "debug",
	}, s.Args...)
}

// Start runs the server process and waits until /readyz answers. A first
// start that finds one of the server's ports taken is retried, up to twice,
// on other ports (see portTaken).
func (s *Server) Start(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		argv := s.Command()
		s.log = &lockedBuffer{}
		s.cmd = exec.Command(argv[0], argv[1:]...)
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		require.NoError(t, s.cmd.Start())
		s.done = make(chan struct{})
		cmd, done := s.cmd, s.done
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() { stopProcess(cmd, done, syscall.SIGTERM) })
		err := pollReady(s.HealthAddr, done)
		if err != nil && !s.started && attempt < 3 && portTaken(err, s.Log()) {
			t.Logf("tally-server: a port was taken since it was picked, starting on other ports:\n%s", s.Log())
			s.BindAddr, s.HTTPAddr, s.HealthAddr, s.WebAddr = FreeAddr(t), FreeAddr(t), FreeAddr(t), FreeAddr(t)
			continue
		}
		failUnready(t, "tally-server", err, s.Log)
		s.started = true
		return
	}
}

var (
	errExited  = errors.New("exited during start")
	errNotSoon = errors.New("not ready after 60s")
)

// pollReady polls http://addr/readyz until it answers 200; it returns
// errExited if the process exits (done) first, errNotSoon after 60 s.
func pollReady(addr string, done <-chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			return errExited
		default:
		}
		if time.Now().After(deadline) {
			return errNotSoon
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failUnready fails the test if err (from pollReady) is not nil.
func failUnready(t testing.TB, name string, err error, log func() string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s %v:\n%s", name, err, log())
	}
}

// waitReady polls http://addr/readyz until it answers 200, failing the test
// if the process exits (done) or 60 s pass.
func waitReady(t testing.TB, name, addr string, done <-chan struct{}, log func() string) {
	t.Helper()
	failUnready(t, name, pollReady(addr, done), log)
}

// portTaken tells whether a process that exited during start (err) did so
// because an address was in use: a port FreeAddr found free can be taken
// before the process binds it, by another listener or by the source port of
// an outgoing connection, which come from the same range.
func portTaken(err error, log string) bool {
	return errors.Is(err, errExited) && strings.Contains(log, "address already in use")
}

// stopProcess sends sig and waits for done, killing after 20 s.
func stopProcess(cmd *exec.Cmd, done <-chan struct{}, sig syscall.Signal) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Stop ends the server with SIGTERM and waits for it.
func (s *Server) Stop(t testing.TB) { t.Helper(); s.stop(syscall.SIGTERM) }

// Kill ends the server with SIGKILL (kill -9) and waits for it.
func (s *Server) Kill(t testing.TB) { t.Helper(); s.stop(syscall.SIGKILL) }

func (s *Server) stop(sig syscall.Signal) { stopProcess(s.cmd, s.done, sig) }

// Log is everything the server printed so far.
func (s *Server) Log() string { return s.log.String() }

// Admin returns an Admin API client over the Unix socket.
func (s *Server) Admin(t testing.TB) tallyv1.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return tallyv1.NewAdminClient(conn)
}

// Bundle returns the server's current trust bundle.
func (s *Server) Bundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	resp, err := s.Admin(t).GetBundle(context.Background(), &tallyv1.GetBundleRequest{})
	require.NoError(t, err)
	b, err := spiffebundle.Parse(s.TrustDomain, resp.GetSpiffeBundle())
	require.NoError(t, err)
	return b
}

// ServerID is the SPIFFE ID the server authenticates with.
func (s *Server) ServerID() spiffeid.ID {
	return spiffeid.RequireFromPath(s.TrustDomain, "/tally/server")
}

// Dial opens a gRPC connection to bind_address, authenticating the server
// by its SVID against bundle and presenting client (nil: no certificate).
func (s *Server) Dial(t testing.TB, bundle *spiffebundle.Bundle, client *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.ServerID()))
	if client != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
	}
	conn, err := grpc.NewClient(s.BindAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Ctl runs tallyctl against this server's admin socket.
func (s *Server) Ctl(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(s.bin, "tallyctl"), append([]string{"--socket", s.AdminSocket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TLSCert turns an SVID into a client certificate.
func TLSCert(svid *x509svid.SVID) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// PID is the server process ID.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// RSS returns the server's resident set size in bytes (VmRSS).
func (s *Server) RSS(t testing.TB) int64 {
	t.Helper()
	return RSSOf(t, s.PID())
}
