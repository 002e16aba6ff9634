package harness

import (
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
)

// AgentProc is a tally-agent process attached to a Server.
type AgentProc struct {
	Server     *Server
	Dir        string
	Socket     string
	HealthAddr string
	// Args are extra flags for `tally-agent run`.
	Args []string
	// Env is extra environment for the process, after this process's own.
	Env []string

	bin     string
	cmd     *exec.Cmd
	log     *lockedBuffer
	done    chan struct{}
	started bool // ready once: its address is known to others
}

// StartAgent attests a new agent to s with a fresh join token (alias, if
// given) and waits until it has synced its entries.
func StartAgent(t testing.TB, s *Server, alias string, args ...string) *AgentProc {
	t.Helper()
	a := NewAgent(t, s, append([]string{"--join-token-file", TokenFile(t, s.NewToken(t, alias))}, args...)...)
	a.Start(t)
	return a
}

// TokenFile writes a join token to a new 0600 file and returns its path.
func TokenFile(t testing.TB, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "join-token")
	require.NoError(t, os.WriteFile(path, []byte(token+"\n"), 0o600))
	return path
}

// NewAgent prepares an agent for s with the given extra flags (which must
// say how it attests); Start or StartNoWait runs it.
func NewAgent(t testing.TB, s *Server, args ...string) *AgentProc {
	t.Helper()
	dir := t.TempDir()
	// Workloads of any uid must reach the socket below dir.
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	bundle := filepath.Join(dir, "bundle.pem")
	var pemBytes []byte
	for _, c := range s.Bundle(t).X509Authorities() {
		pemBytes = append(pemBytes, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	require.NoError(t, os.WriteFile(bundle, pemBytes, 0o644))
	a := &AgentProc{
		Server:     s,
		Dir:        dir,
		Socket:     filepath.Join(dir, "sock", "agent.sock"),
		HealthAddr: FreeAddr(t),
		bin:        Binaries(t),
	}
	a.Args = append([]string{"--trust-bundle", bundle}, args...)
	return a
}

// Start runs the agent process and waits until /readyz answers. A first
// start that finds the health port taken is retried, up to twice, on
// another port (see portTaken).
func (a *AgentProc) Start(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		done := a.StartNoWait(t)
		err := pollReady(a.HealthAddr, done)
		if err != nil && !a.started && attempt < 3 && portTaken(err, a.Log()) {
			t.Logf("tally-agent: its health port was taken since it was picked, starting on another:\n%s", a.Log())
			a.HealthAddr = FreeAddr(t)
			continue
		}
		failUnready(t, "tally-agent", err, a.Log)
		a.started = true
		return
	}
}

// StartNoWait runs the agent process and returns a channel closed when it
// exits.
func (a *AgentProc) StartNoWait(t testing.TB) <-chan struct{} {
	t.Helper()
	argv := append([]string{"run",
		"--trust-domain", a.Server.TrustDomain.Name(),
		"--server-address", a.Server.BindAddr,
		"--socket-path", a.Socket,
		"--data-dir", filepath.Join(a.Dir, "data"),
		"--health-address", a.HealthAddr,
		"--log-level", "debug",
	}, a.Args...)
	a.log = &lockedBuffer{}
	a.cmd = exec.Command(filepath.Join(a.bin, "tally-agent"), argv...)
	a.cmd.Env = append(os.Environ(), a.Env...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	require.NoError(t, a.cmd.Start())
	a.done = make(chan struct{})
	cmd, done := a.cmd, a.done
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { a.stop(syscall.SIGTERM) })
	return done
}

// Stop ends the agent with SIGTERM; Kill with SIGKILL.
func (a *AgentProc) Stop(t testing.TB) { t.Helper(); a.stop(syscall.SIGTERM) }
func (a *AgentProc) Kill(t testing.TB) { t.Helper(); a.stop(syscall.SIGKILL) }

func (a *AgentProc) stop(sig syscall.Signal) { stopProcess(a.cmd, a.done, sig) }

// Log is what the agent printed so far.
func (a *AgentProc) Log() string { return a.log.String() }

// PID is the agent's process ID.
func (a *AgentProc) PID() int { return a.cmd.Process.Pid }

// Addr is the Workload API address in SPIFFE_ENDPOINT_SOCKET form.
func (a *AgentProc) Addr() string { return "unix://" + a.Socket }

// ID is the agent's SPIFFE ID, read from the SVID it keeps.
func (a *AgentProc) ID(t testing.TB) spiffeid.ID {
	t.Helper()
	svid, err := loadAgentSVID(filepath.Join(a.Dir, "data"))
	require.NoError(t, err)
	return svid
}

// Client returns a go-spiffe Workload API client for this agent.
func (a *AgentProc) Client(t testing.TB) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr(a.Addr()))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}
