package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// cfgAddrs are the addresses and paths of one tally-server process.
type cfgAddrs struct {
	dataDir, socket, bind, http, health, web string
}

func newCfgAddrs(t *testing.T) cfgAddrs {
	t.Helper()
	dir := t.TempDir()
	return cfgAddrs{
		dataDir: filepath.Join(dir, "data"),
		socket:  filepath.Join(dir, "admin.sock"),
		bind:    harness.FreeAddr(t),
		http:    harness.FreeAddr(t),
		health:  harness.FreeAddr(t),
		web:     harness.FreeAddr(t),
	}
}

// flags are the command-line flags naming a.
func (a cfgAddrs) flags() []string {
	return []string{"--data-dir", a.dataDir, "--admin-socket", a.socket, "--bind-address", a.bind,
		"--http-address", a.http, "--health-address", a.health, "--web-address", a.web}
}

// yaml is the config file lines naming a.
func (a cfgAddrs) yaml() string {
	return fmt.Sprintf("data_dir: %s\nadmin_socket: %s\nbind_address: %s\nhttp_address: %s\nhealth_address: %s\nweb_address: %s\n",
		a.dataDir, a.socket, a.bind, a.http, a.health, a.web)
}

// cfgWriteFile writes a config file into a temp dir and returns its path.
func cfgWriteFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tally.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// cfgRunToExit runs tally-server with args and returns its stderr and
// exit code. A server that starts serving instead of exiting is killed after
// a minute and fails the test.
func cfgRunToExit(t *testing.T, args ...string) (stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(harness.Binaries(t), "tally-server"), args...)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &errb, &errb
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "tally-server did not exit:\n%s", errb.String())
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return errb.String(), exit.ExitCode()
	}
	require.NoError(t, err)
	return errb.String(), 0
}

// cfgProcess is a tally-server started by cfgStart.
type cfgProcess struct {
	cmd  *exec.Cmd
	log  string // file with its stdout and stderr
	done chan error
}

// cfgStart starts tally-server with args and waits until /readyz on
// healthAddr answers 200. The process is stopped when the test ends.
func cfgStart(t *testing.T, healthAddr string, args ...string) *cfgProcess {
	t.Helper()
	p := &cfgProcess{log: filepath.Join(t.TempDir(), "server.log"), done: make(chan error, 1)}
	f, err := os.Create(p.log)
	require.NoError(t, err)
	defer f.Close()
	p.cmd = exec.Command(filepath.Join(harness.Binaries(t), "tally-server"), args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	require.NoError(t, p.cmd.Start())
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + healthAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("tally-server exited during start (%v):\n%s", err, p.output(t))
		default:
		}
		require.True(t, time.Now().Before(deadline), "tally-server not ready after a minute:\n%s", p.output(t))
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *cfgProcess) output(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(p.log)
	require.NoError(t, err)
	return string(b)
}

// stop sends SIGTERM and requires a clean exit (status 0).
func (p *cfgProcess) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	err := <-p.done
	require.NoError(t, err, "tally-server did not exit cleanly on SIGTERM:\n%s", p.output(t))
}

// cfgCtl runs tallyctl against socket.
func cfgCtl(t *testing.T, socket string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(harness.Binaries(t), "tallyctl"), append([]string{"--socket", socket, "--timeout", "20s"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// cfgMintLifetime mints an X509-SVID with tallyctl (server default TTL) and
// returns NotAfter - NotBefore of the leaf.
func cfgMintLifetime(t *testing.T, socket, id string) time.Duration {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "svid")
	stdout, stderr, err := cfgCtl(t, socket, "x509", "mint", "--spiffe-id", id, "--out-dir", dir)
	require.NoError(t, err, "stdout: %s\nstderr: %s", stdout, stderr)
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	require.NoError(t, err)
	require.Equal(t, id, svid.ID.String())
	leaf := svid.Certificates[0]
	return leaf.NotAfter.Sub(leaf.NotBefore)
}

// cfgJWTLifetime mints a JWT-SVID with tallyctl (server default TTL) and
// returns how long from now it lives.
func cfgJWTLifetime(t *testing.T, socket, id string) time.Duration {
	t.Helper()
	stdout, stderr, err := cfgCtl(t, socket, "jwt", "mint", "--spiffe-id", id, "--audience", "cfg", "-o", "json")
	require.NoError(t, err, "stderr: %s", stderr)
	var out struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &out), stdout)
	return time.Until(out.ExpiresAt)
}

// ttl6Message matches a message that names the ca_ttl/6 limit.
var ttl6Message = regexp.MustCompile(`(?i)ca[ _-]?ttl ?/ ?6`)

func TestConfigRefusedAtStart(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { busy.Close() })

	cases := []struct {
		name string
		// file, if set, is written to a config file given with --config;
		// %ADDRS% in it is replaced by the addresses' YAML lines.
		file string
		args []string
		// want are regular expressions stderr must match; %FILE% is the
		// config file's path.
		want []string
	}{
		{
			name: "unknown YAML key",
			file: "trust_domain: example.org\n%ADDRS%x509_svid_tll: 1h\n",
			want: []string{`x509_svid_tll`, `%FILE%`},
		},
		{
			name: "YAML key of the wrong type",
			file: "trust_domain: example.org\n%ADDRS%ca_ttl: forever\n",
			want: []string{`forever`, `%FILE%`},
		},
		{
			name: "YAML that is not a mapping",
			file: "- trust_domain\n",
			want: []string{`%FILE%`},
		},
		{
			name: "missing config file",
			args: []string{"--config", "/nonexistent/tally.yaml", "--trust-domain", "example.org"},
			want: []string{`/nonexistent/tally\.yaml`},
		},
		{
			name: "missing --trust-domain",
			want: []string{`trust_domain`},
		},
		{
			name: "bad trust domain",
			args: []string{"--trust-domain", "Example.org"},
			want: []string{`trust_domain`, `Example\.org`},
		},
		{
			name: "trust domain with port",
			args: []string{"--trust-domain", "example.org:8443"},
			want: []string{`trust_domain`},
		},
		{
			name: "bind address without port",
			args: []string{"--trust-domain", "example.org", "--bind-address", "nonsense"},
			want: []string{`bind_address`, `nonsense`},
		},
		{
			name: "bind address with bad port",
			args: []string{"--trust-domain", "example.org", "--bind-address", "127.0.0.1:99999"},
			want: []string{`bind_address`},
		},
		{
			name: "bind address in use",
			args: []string{"--trust-domain", "example.org", "--bind-address", busy.Addr().String()},
			want: []string{`bind_address`},
		},
		{
			name: "health address without port",
			args: []string{"--trust-domain", "example.org", "--health-address", "localhost"},
			want: []string{`health_address`},
		},
		{
			name: "x509 svid ttl above ca ttl / 6",
			args: []string{"--trust-domain", "example.org", "--x509-svid-ttl", "5h", "--ca-ttl", "24h"},
			want: []string{ttl6Message.String(), `(?i)x509[_-]?svid[_-]?ttl`, `5h`},
		},
		{
			name: "jwt svid ttl above ca ttl / 6",
			args: []string{"--trust-domain", "example.org", "--jwt-svid-ttl", "2h", "--ca-ttl", "6h"},
			want: []string{ttl6Message.String(), `(?i)jwt[_-]?svid[_-]?ttl`},
		},
		{
			name: "x509 svid ttl above ca ttl / 6 in the file",
			file: "trust_domain: example.org\n%ADDRS%ca_ttl: 24h\nx509_svid_ttl: 5h\n",
			want: []string{ttl6Message.String(), `(?i)x509[_-]?svid[_-]?ttl`},
		},
		{
			name: "negative ca ttl",
			args: []string{"--trust-domain", "example.org", "--ca-ttl", "-1h"},
			want: []string{`ca_ttl`},
		},
		{
			name: "negative x509 svid ttl",
			args: []string{"--trust-domain", "example.org", "--x509-svid-ttl", "-1s"},
			want: []string{`x509_svid_ttl`},
		},
		{
			name: "bad admin id",
			args: []string{"--trust-domain", "example.org", "--admin-id", "spiffe://example.org/a/../b"},
			want: []string{`admin_ids`},
		},
		{
			name: "bad log level",
			args: []string{"--trust-domain", "example.org", "--log-level", "loud"},
			want: []string{`log_level`, `loud`},
		},
		{
			name: "upstream cert without key",
			args: []string{"--trust-domain", "example.org", "--upstream-cert-file", "/tmp/ca.pem"},
			want: []string{`upstream_cert_file`, `upstream_key_file`},
		},
		{
			name: "unknown flag",
			args: []string{"--trust-domain", "example.org", "--trust-domian", "x"},
			want: []string{`trust-domian`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case has its own addresses and files
			addrs := newCfgAddrs(t)
			args := []string{"run"}
			var file string
			if tc.file != "" {
				file = cfgWriteFile(t, strings.ReplaceAll(tc.file, "%ADDRS%", addrs.yaml()))
				args = append(args, "--config", file)
			} else {
				args = append(args, addrs.flags()...)
			}
			args = append(args, tc.args...)
			stderr, code := cfgRunToExit(t, args...)
			require.NotZero(t, code, "tally-server accepted the config:\n%s", stderr)
			for _, w := range tc.want {
				require.Regexp(t, strings.ReplaceAll(w, "%FILE%", regexp.QuoteMeta(file)), stderr)
			}
			_, err := os.Stat(addrs.socket)
			require.True(t, os.IsNotExist(err), "refused server left its admin socket")
		})
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	t.Parallel()
	const (
		yamlAdmin = "spiffe://example.org/ops/yaml-admin"
		flagAdmin = "spiffe://example.org/ops/flag-admin"
	)
	addrs := newCfgAddrs(t)
	file := cfgWriteFile(t, "# Tally server\ntrust_domain: example.org\n"+addrs.yaml()+
		"ca_ttl: 24h\nx509_svid_ttl: 2h\njwt_svid_ttl: 10m\nlog_level: info\nlog_format: text\n"+
		"admin_ids:\n  - "+yamlAdmin+"\n")
	// The harness's client helpers, pointed at this process.
	client := &harness.Server{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		AdminSocket: addrs.socket,
		BindAddr:    addrs.bind,
	}
	adminOverTLS := func(t *testing.T, id string) error {
		cert := admMintCert(t, client, id)
		_, err := tallyv1.NewAdminClient(client.Dial(t, client.Bundle(t), cert)).ListEntries(context.Background(), &tallyv1.ListEntriesRequest{})
		return err
	}

	t.Run("file values are honoured", func(t *testing.T) {
		p := cfgStart(t, addrs.health, "run", "--config", file)
		resp, err := http.Get("http://" + addrs.health + "/livez")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		fi, err := os.Stat(addrs.socket)
		require.NoError(t, err, "admin socket from the file")
		require.Equal(t, os.ModeSocket, fi.Mode().Type())
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "admin socket mode")

		lifetime := cfgMintLifetime(t, addrs.socket, "spiffe://example.org/cfg/file")
		require.Greater(t, lifetime, 90*time.Minute, "x509_svid_ttl: 2h from the file")
		require.LessOrEqual(t, lifetime, 2*time.Hour+time.Minute)
		jwt := cfgJWTLifetime(t, addrs.socket, "spiffe://example.org/cfg/file")
		require.Greater(t, jwt, 8*time.Minute, "jwt_svid_ttl: 10m from the file")
		require.LessOrEqual(t, jwt, 10*time.Minute)

		require.NoError(t, adminOverTLS(t, yamlAdmin), "admin_ids from the file")
		p.stop(t)
		out := p.output(t)
		require.Contains(t, out, "level=INFO", "log_format: text")
		require.NotContains(t, out, "level=DEBUG", "log_level: info")
		require.NotContains(t, out, `"level":`, "log_format: text")
	})

	t.Run("flags override the file", func(t *testing.T) {
		p := cfgStart(t, addrs.health, "run", "--config", file, "--x509-svid-ttl", "30m",
			"--admin-id", flagAdmin, "--log-format", "json")
		lifetime := cfgMintLifetime(t, addrs.socket, "spiffe://example.org/cfg/flag")
		require.Greater(t, lifetime, time.Duration(0))
		require.LessOrEqual(t, lifetime, 30*time.Minute+time.Minute, "--x509-svid-ttl 30m over the file's 2h")
		jwt := cfgJWTLifetime(t, addrs.socket, "spiffe://example.org/cfg/flag")
		require.Greater(t, jwt, 8*time.Minute, "jwt_svid_ttl: 10m still from the file")

		require.NoError(t, adminOverTLS(t, flagAdmin), "--admin-id")
		err := adminOverTLS(t, yamlAdmin)
		admRequireStatus(t, err, codes.PermissionDenied, yamlAdmin)
		p.stop(t)
		require.Contains(t, p.output(t), `"level":"INFO"`, "--log-format json over the file's text")
	})
}

func TestConfigShortCATTLDerivesSVIDTTLs(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t, "--ca-ttl", "1h")
	resp, err := s.Admin(t).MintJWTSVID(context.Background(), &tallyv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/w", Audience: []string{"a"}})
	require.NoError(t, err)
	require.LessOrEqual(t, time.Until(time.Unix(resp.GetExpiresAt(), 0)), 5*time.Minute, "jwt default min(5m, ca_ttl/6)")
}
