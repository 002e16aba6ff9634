// Package stepca runs a real step-ca (smallstep/certificates, built from the
// Go module proxy by scripts/stepca/build.sh and cached in .cache/step-ca)
// for the tests: its own root and intermediate, and a JWK provisioner whose
// template lets it issue the intermediate CA certificates Tally's X.509 slots
// need.
package stepca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
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

	"github.com/stretchr/testify/require"
	"go.step.sm/crypto/jose"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binary returns the path of step-ca, building it on first use.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..", "..")
		cmd := exec.Command(filepath.Join(root, "scripts", "stepca", "build.sh"))
		cmd.Dir = root
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			buildErr = fmt.Errorf("scripts/stepca/build.sh: %v\n%s", err, out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		binDir = strings.TrimSpace(lines[len(lines)-1])
	})
	require.NoError(t, buildErr)
	return filepath.Join(binDir, "step-ca")
}

// Provisioner is the JWK provisioner Tally signs with.
const Provisioner = "tally"

// intermediateTemplate lets the provisioner issue CA certificates that sign
// leaves only (path length 0), for the SANs of the CSR (Tally's: the trust
// domain's ID).
const intermediateTemplate = `{
  "subject": {{ toJson .Subject }},
  "sans": {{ toJson .SANs }},
  "keyUsage": ["certSign", "crlSign"],
  "basicConstraints": {"isCA": true, "maxPathLen": 0}
}`

// CA is a running step-ca.
type CA struct {
	URL          string // https://127.0.0.1:port
	Fingerprint  string // hex SHA-256 of the root certificate
	RootFile     string // the root certificate (PEM)
	PasswordFile string // the provisioner key's password
	Root         *x509.Certificate

	dir, config, addr string
	cmd               *exec.Cmd
	done              chan struct{}
	log               *os.File
}

// Start runs a step-ca whose certificates live at most maxCert, until the
// test ends.
func Start(t testing.TB, maxCert time.Duration) *CA {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	c := &CA{dir: dir}
	now := time.Now()

	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test step-ca root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	require.NoError(t, err)
	c.Root, err = x509.ParseCertificate(rootDER)
	require.NoError(t, err)
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Test step-ca intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, c.Root, interKey.Public(), rootKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(interKey)
	require.NoError(t, err)
	c.RootFile = filepath.Join(dir, "root.crt")
	writePEM(t, c.RootFile, "CERTIFICATE", rootDER)
	writePEM(t, filepath.Join(dir, "intermediate.crt"), "CERTIFICATE", interDER)
	writePEM(t, filepath.Join(dir, "intermediate.key"), "EC PRIVATE KEY", keyDER)
	sum := sha256.Sum256(rootDER)
	c.Fingerprint = hex.EncodeToString(sum[:])

	password := rand.Text()
	c.PasswordFile = filepath.Join(dir, "password")
	require.NoError(t, os.WriteFile(c.PasswordFile, []byte(password), 0o600))
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	require.NoError(t, err)
	jwk.KeyID, err = jose.Thumbprint(jwk)
	require.NoError(t, err)
	enc, err := jose.EncryptJWK(jwk, []byte(password))
	require.NoError(t, err)
	encrypted, err := enc.CompactSerialize()
	require.NoError(t, err)
	pub := jwk.Public()

	c.addr = freeAddr(t)
	c.URL = "https://" + c.addr
	cfg := map[string]any{
		"root": c.RootFile, "crt": filepath.Join(dir, "intermediate.crt"), "key": filepath.Join(dir, "intermediate.key"),
		"address": c.addr, "dnsNames": []string{"127.0.0.1", "localhost"},
		"logger": map[string]any{"format": "text"},
		"authority": map[string]any{"provisioners": []any{map[string]any{
			"type": "JWK", "name": Provisioner, "key": &pub, "encryptedKey": encrypted,
			"options": map[string]any{"x509": map[string]any{"template": intermediateTemplate}},
			"claims":  map[string]any{"maxTLSCertDuration": maxCert.String(), "defaultTLSCertDuration": maxCert.String(), "minTLSCertDuration": "1s"},
		}}},
	}
	raw, err := json.MarshalIndent(cfg, "", "  ")
	require.NoError(t, err)
	c.config = filepath.Join(dir, "ca.json")
	require.NoError(t, os.WriteFile(c.config, raw, 0o600))
	c.start(t, bin)
	t.Cleanup(c.stop)
	return c
}

// Stop stops step-ca (an upstream that is down); Restart starts it again on
// the same address.
func (c *CA) Stop(t testing.TB) { c.stop() }

func (c *CA) Restart(t testing.TB) { t.Helper(); c.start(t, Binary(t)) }

func (c *CA) start(t testing.TB, bin string) {
	t.Helper()
	var err error
	c.log, err = os.OpenFile(filepath.Join(c.dir, "step-ca.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	require.NoError(t, err)
	c.cmd = exec.Command(bin, c.config)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.Env = append(os.Environ(), "HOME="+c.dir, "STEPPATH="+c.dir)
	require.NoError(t, c.cmd.Start())
	c.done = make(chan struct{})
	cmd, done := c.cmd, c.done
	go func() { _ = cmd.Wait(); close(done) }()

	pool := x509.NewCertPool()
	pool.AddCert(c.Root)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig(pool)}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(c.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			t.Fatalf("step-ca exited during start:\n%s", c.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("step-ca not healthy after 30s: %v\n%s", err, c.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *CA) stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
	_ = c.log.Close()
}

// Log returns what step-ca printed.
func (c *CA) Log() string {
	raw, _ := os.ReadFile(filepath.Join(c.dir, "step-ca.log"))
	return string(raw)
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func tlsConfig(roots *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
}
