// Package spire runs a real SPIRE v1.13.3 deployment (one server, one agent)
// for tests and benchmarks that compare Tally with the reference
// implementation on the same machine, in the same run.
//
// The binaries are built from the Go module proxy by scripts/spire/build.sh
// into the repository's git-ignored .cache/spire (about 20 minutes cold, then
// instant). The deployment follows the baseline setup: sqlite3 datastore,
// memory key manager, join_token node attestation, unix workload attestation,
// trust domain example.org, server on loopback, sockets in the test's temp dir.
package spire

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	// TrustDomain is the deployment's trust domain.
	TrustDomain = "example.org"
	// AgentID is the SPIFFE ID the agent's join token is issued for; it is
	// the default parent of workload entries.
	AgentID = "spiffe://example.org/bench/agent"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries returns the directory holding spire-server and spire-agent. The
// first call in a test process runs scripts/spire/build.sh, which returns at
// once when the binaries are already built and builds them otherwise (about
// 20 minutes cold: give `go test` a -timeout to match).
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..", "..")
		cmd := exec.Command(filepath.Join(root, "scripts", "spire", "build.sh"))
		cmd.Dir = root
		cmd.Stderr = os.Stderr // build progress, if any
		out, err := cmd.Output()
		if err != nil {
			buildErr = fmt.Errorf("scripts/spire/build.sh: %v\n%s", err, out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		binDir = strings.TrimSpace(lines[len(lines)-1])
	})
	require.NoError(t, buildErr)
	return binDir
}

// Options tune a deployment. The zero value is the baseline setup.
type Options struct {
	// LogLevel of both processes (default "WARN").
	LogLevel string
	// ServerConfig and AgentConfig are extra HCL lines placed inside the
	// server { } and agent { } blocks, e.g. `x509_svid_cache_max_size = 2000`.
	ServerConfig string
	AgentConfig  string
	// AgentPlugins are extra plugin blocks for the agent's plugins { },
	// e.g. a WorkloadAttestor "k8s" block.
	AgentPlugins string
}

// Deployment is a running SPIRE server and agent. Both are stopped (TERM,
// then KILL after 5 s) when the test ends.
type Deployment struct {
	dir          string
	bin          string
	serverSocket string
	agentSocket  string
	server       *proc
	agent        *proc
}

// Entry is a workload registration entry. Selectors are "type:value"
// strings such as "unix:uid:0"; ParentID defaults to AgentID.
type Entry struct {
	SPIFFEID  string
	ParentID  string
	Selectors []string
}

// Start runs a SPIRE server, waits for it to be healthy, generates a join
// token for AgentID, runs an agent with the server's bundle as its
// trust_bundle_path and waits for the agent to be healthy. No workload
// entries exist yet: see CreateEntries.
func Start(t testing.TB, opts Options) *Deployment {
	t.Helper()
	bin := Binaries(t)
	if opts.LogLevel == "" {
		opts.LogLevel = "WARN"
	}
	dir := t.TempDir()
	sockDir := dir
	// A unix socket path must fit in 108 bytes; long test names can make
	// t.TempDir() too deep.
	if len(filepath.Join(sockDir, "server.sock")) > 100 {
		var err error
		sockDir, err = os.MkdirTemp("", "spire")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(sockDir) })
	}
	d := &Deployment{
		dir:          dir,
		bin:          bin,
		serverSocket: filepath.Join(sockDir, "server.sock"),
		agentSocket:  filepath.Join(sockDir, "agent.sock"),
	}
	for _, sub := range []string{"server", "agent"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, sub), 0o700))
	}
	port := freePort(t)

	serverConf := filepath.Join(dir, "server.conf")
	require.NoError(t, os.WriteFile(serverConf, fmt.Appendf(nil, serverTmpl,
		port, d.serverSocket, TrustDomain, filepath.Join(dir, "server"), opts.LogLevel, opts.ServerConfig,
		filepath.Join(dir, "server", "datastore.sqlite3")), 0o600))
	d.server = startProc(t, filepath.Join(dir, "server.log"),
		filepath.Join(bin, "spire-server"), "run", "-config", serverConf)
	t.Cleanup(d.server.stop)
	d.waitHealthy(t, d.server, "spire-server", d.serverSocket)

	bundle, err := d.Server("bundle", "show")
	require.NoError(t, err, "spire-server bundle show: %s", bundle)
	bundlePath := filepath.Join(dir, "bundle.pem")
	require.NoError(t, os.WriteFile(bundlePath, []byte(bundle), 0o600))
	out, err := d.Server("token", "generate", "-spiffeID", AgentID, "-ttl", "600")
	require.NoError(t, err, "spire-server token generate: %s", out)
	var token string
	if fields := strings.Fields(out); len(fields) == 2 && fields[0] == "Token:" {
		token = fields[1]
	}
	require.NotEmpty(t, token, "no join token in %q", out)

	agentConf := filepath.Join(dir, "agent.conf")
	require.NoError(t, os.WriteFile(agentConf, fmt.Appendf(nil, agentTmpl,
		filepath.Join(dir, "agent"), opts.LogLevel, port, d.agentSocket, bundlePath, TrustDomain,
		opts.AgentConfig, opts.AgentPlugins), 0o600))
	d.agent = startProc(t, filepath.Join(dir, "agent.log"),
		filepath.Join(bin, "spire-agent"), "run", "-config", agentConf, "-joinToken", token)
	t.Cleanup(d.agent.stop) // runs before the server's
	d.waitHealthy(t, d.agent, "spire-agent", d.agentSocket)
	return d
}

const serverTmpl = `server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = %q
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    default_jwt_svid_ttl = "5m"
%s
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`

const agentTmpl = `agent {
    data_dir = %q
    log_level = %q
    server_address = "127.0.0.1"
    server_port = "%d"
    socket_path = %q
    trust_bundle_path = %q
    trust_domain = %q
%s
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
%s
}
`

// AgentSocket is the path of the agent's Workload API socket.
func (d *Deployment) AgentSocket() string { return d.agentSocket }

// ServerSocket is the path of the server's admin API socket.
func (d *Deployment) ServerSocket() string { return d.serverSocket }

// AgentCLI is the path of the spire-agent binary, e.g. for
// `api fetch x509 -socketPath <AgentSocket()>`.
func (d *Deployment) AgentCLI() string { return filepath.Join(d.bin, "spire-agent") }

// ServerCLI is the path of the spire-server binary.
func (d *Deployment) ServerCLI() string { return filepath.Join(d.bin, "spire-server") }

// ServerPID is the process ID of spire-server.
func (d *Deployment) ServerPID() int { return d.server.cmd.Process.Pid }

// AgentPID is the process ID of spire-agent.
func (d *Deployment) AgentPID() int { return d.agent.cmd.Process.Pid }

// Dir holds the configs, the datastore and the logs (server.log, agent.log).
func (d *Deployment) Dir() string { return d.dir }

// Server runs `spire-server <args> -socketPath <ServerSocket()>` and returns
// its combined output.
func (d *Deployment) Server(args ...string) (string, error) {
	out, err := exec.Command(d.ServerCLI(), append(args, "-socketPath", d.serverSocket)...).CombinedOutput()
	return string(out), err
}

// CreateEntries registers entries with one `spire-server entry create -data`
// call, i.e. one BatchCreateEntry RPC, and fails the test if any is refused
// (the CLI then exits non-zero and prints "Failed to create ...").
// The agent serves new entries after its next sync (up to about 5 s).
func (d *Deployment) CreateEntries(t testing.TB, entries []Entry) {
	t.Helper()
	type selector struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	}
	type entry struct {
		SPIFFEID  string     `json:"spiffe_id"`
		ParentID  string     `json:"parent_id"`
		Selectors []selector `json:"selectors"`
	}
	data := struct {
		Entries []entry `json:"entries"`
	}{Entries: make([]entry, 0, len(entries))}
	for _, e := range entries {
		je := entry{SPIFFEID: e.SPIFFEID, ParentID: e.ParentID}
		if je.ParentID == "" {
			je.ParentID = AgentID
		}
		for _, s := range e.Selectors {
			typ, value, ok := strings.Cut(s, ":")
			require.True(t, ok, "selector %q is not type:value", s)
			je.Selectors = append(je.Selectors, selector{typ, value})
		}
		data.Entries = append(data.Entries, je)
	}
	f, err := os.CreateTemp(d.dir, "entries-*.json")
	require.NoError(t, err)
	defer os.Remove(f.Name())
	require.NoError(t, json.NewEncoder(f).Encode(data))
	require.NoError(t, f.Close())
	out, err := d.Server("entry", "create", "-data", f.Name())
	require.NoError(t, err, "spire-server entry create: %s", tail(out, 4096))
}

// RSS returns the resident set size (VmRSS) of pid in bytes.
func (d *Deployment) RSS(t testing.TB, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb * 1024
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// waitHealthy polls `<name> healthcheck` until it succeeds (60 s at most).
func (d *Deployment) waitHealthy(t testing.TB, p *proc, name, socket string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(d.bin, name), "healthcheck", "-socketPath", socket).CombinedOutput()
		if err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited during start: %v\n%s", name, p.cmd.ProcessState, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after 60s: %s\n%s", name, out, p.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(t testing.TB, logPath string, argv ...string) *proc {
	t.Helper()
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	defer logf.Close() // the child keeps its own descriptor
	p := &proc{cmd: exec.Command(argv[0], argv[1:]...), log: logPath, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// Do not outlive a test binary that is killed (e.g. by -timeout).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p
}

// stop sends SIGTERM, then SIGKILL after 5 s, and waits for the exit.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	return tail(string(b), 8192)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
