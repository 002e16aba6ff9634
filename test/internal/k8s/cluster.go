// Package k8s runs a real Kubernetes control plane — etcd and kube-apiserver built from the Go
// module proxy by scripts/k8s/build.sh — for tests, and creates the objects Tally's
// attestation needs (namespaces, service accounts, nodes, pre-bound pods, bound tokens).
//
// There is no controller-manager, scheduler or kubelet: namespaces never finish deleting,
// ServiceAccounts are not created automatically, pods stay Pending unless a node simulator
// (test/internal/nodesim) marks them Running. The helpers below account for that.
//
// Caveat: kube-apiserver caches successful token authentications for 10 s, so a bound token
// that was reviewed successfully keeps reviewing as authenticated for up to 10 s after its pod
// is deleted; a token never reviewed before is rejected at once.
package k8s

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// DefaultSAIssuer is the service-account token issuer of a cluster started without
// Options.SAIssuer (kube-apiserver's conventional in-cluster issuer).
const DefaultSAIssuer = "https://kubernetes.default.svc"

const readyTimeout = 2 * time.Minute

// Cluster is a running etcd + kube-apiserver pair listening on 127.0.0.1 only. Its fields are
// read-only; the helper methods are safe for concurrent use.
type Cluster struct {
	// Config authenticates as the cluster admin (client certificate, group system:masters).
	// Each call site may copy and modify it (rest.CopyConfig).
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// URL is the apiserver's base URL, https://127.0.0.1:<port>.
	URL string
	// CAFile is the PEM file of the CA that signed the apiserver's serving certificate (and the
	// admin client certificate). It lives until the cluster stops.
	CAFile string
	// CAKeyFile is the PEM (PKCS#8) key of that CA, for tests that sign certificates the
	// apiserver trusts (a real kubelet's, test/internal/node).
	CAKeyFile string
	// AdminToken is a static bearer token of the same admin user (--token-auth-file).
	AdminToken string
	// Kubeconfig is a kubeconfig file (admin bearer token) for processes a test starts.
	Kubeconfig string
	// SAIssuer is the `iss` of service-account tokens (--service-account-issuer).
	SAIssuer string
	// SAKey is the RSA private key that signs service-account tokens, for tests that need to
	// forge a token (for example an expired one) the apiserver would itself accept.
	SAKey *rsa.PrivateKey
	// SAKeyFile is SAKey as a PEM file (a kube-controller-manager's
	// --service-account-private-key-file).
	SAKeyFile string
	// Kubelet reports whether the cluster was started with Options.Kubelet.
	Kubelet bool
	// EtcdURL is etcd's client URL (plain http on 127.0.0.1).
	EtcdURL string
	// Dir is the run directory (PKI, etcd data, logs); removed when the test ends.
	Dir string

	etcd, apiserver *proc
	startAPIServer  func() error // same flags and port each time
	restartMu       sync.Mutex
}

// RestartAPIServer stops kube-apiserver and starts it again on the same
// port with the same flags (etcd keeps the state), returning once it is
// ready: what an API server upgrade or crash looks like to its clients.
func (c *Cluster) RestartAPIServer(t testing.TB) {
	t.Helper()
	c.restartMu.Lock()
	defer c.restartMu.Unlock()
	c.apiserver.stop(10 * time.Second)
	if err := c.startAPIServer(); err != nil {
		t.Fatalf("k8s: restart kube-apiserver: %v", err)
	}
}

// Options adjusts a cluster started with StartWith. The zero value is what Start uses.
type Options struct {
	// SAIssuer is --service-account-issuer; default DefaultSAIssuer.
	SAIssuer string
	// ExtraAPIServerFlags are appended to kube-apiserver's command line.
	ExtraAPIServerFlags []string
	// Kubelet readies the apiserver for a real kubelet (test/internal/node): the Node
	// authorizer (beside RBAC) and NodeRestriction admission for the kubelet's identity
	// system:node:NAME, and the apiserver's calls to the kubelet (logs, exec) made with the
	// admin client certificate to the node's Hostname address, verifying the kubelet's
	// serving certificate against the cluster CA. These flags name files of the cluster's
	// PKI, which exists only once the cluster starts, so they cannot be ExtraAPIServerFlags.
	Kubelet bool
}

// Start runs a fresh control plane for t: PKI generated in Go, etcd and kube-apiserver on free
// 127.0.0.1 ports under t.TempDir(), the same flags as the project's proven recipe
// (--endpoint-reconciler-type=none, RBAC, static admin token, client CA, service-account
// issuer/keys, --api-audiences). It returns once /readyz answers ok (typically 4–5 s; fails
// the test after 2 min) and stops both processes in t.Cleanup. Any number of clusters may run
// at once, each with its own ports, CA and service-account key. It builds the binaries first
// if needed (see Binaries).
func Start(t testing.TB) *Cluster {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with Options.
func StartWith(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := launch(Binaries(t), t.TempDir(), opts, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("k8s: kube-apiserver log tail (%s):\n%s", c.URL, c.apiserver.logTail(15))
		}
		c.stop()
	})
	return c
}

// launch generates the PKI under dir and starts etcd and kube-apiserver,
// retrying with other ports if a free port was taken meanwhile.
func launch(bin, dir string, opts Options, logf func(string, ...any)) (*Cluster, error) {
	if opts.SAIssuer == "" {
		opts.SAIssuer = DefaultSAIssuer
	}
	p, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		c, err := start(bin, dir, attempt, p, opts)
		if err == nil {
			return c, nil
		}
		// Free ports are found by binding :0 and closing; another process may win the race.
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			return nil, err
		}
		logf("k8s: %v; retrying with other ports", err)
	}
}

// Shared is one control plane for a whole test package, so that its tests
// do not each pay for starting one: the first test that asks starts it,
// and TestMain stops it after the last. Tests share it by taking a
// namespace each (Namespace) and naming cluster-scoped objects (nodes)
// after it. The zero value is ready; safe for concurrent use.
type Shared struct {
	// Options are the cluster's options (e.g. Kubelet for test/internal/node).
	Options Options

	once sync.Once
	c    *Cluster
	dir  string
	err  error
}

// Get returns the shared cluster, starting it on first use; it fails t if
// the cluster could not start.
func (s *Shared) Get(t testing.TB) *Cluster {
	t.Helper()
	bin := Binaries(t)
	s.once.Do(func() {
		if s.dir, s.err = os.MkdirTemp("", "tally-k8s-"); s.err != nil {
			return
		}
		s.c, s.err = launch(bin, s.dir, s.Options, t.Logf)
	})
	if s.err != nil {
		t.Fatalf("k8s: shared cluster: %v", s.err)
	}
	return s.c
}

// Stop stops the shared cluster if it was started and removes its files.
func (s *Shared) Stop() {
	if s.c != nil {
		s.c.stop()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

var errPortTaken = errors.New("port taken")

func start(bin, dir string, attempt int, p *pki, opts Options) (*Cluster, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	apiPort, etcdPort, peerPort := ports[0], ports[1], ports[2]
	suffix := strconv.Itoa(attempt)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	c := &Cluster{
		URL:        fmt.Sprintf("https://127.0.0.1:%d", apiPort),
		CAFile:     p.caFile,
		AdminToken: p.adminToken,
		SAIssuer:   opts.SAIssuer,
		SAKey:      p.saKey,
		SAKeyFile:  p.saKeyFile,
		CAKeyFile:  p.caKeyFile,
		Kubelet:    opts.Kubelet,
		EtcdURL:    etcdURL,
		Dir:        dir,
	}

	dataDir := filepath.Join(dir, "etcd-"+suffix)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("k8s: etcd dir: %w", err)
	}
	c.etcd, err = startProc("etcd", filepath.Join(dir, "etcd-"+suffix+".log"), filepath.Join(bin, "etcd"), []string{
		"--name=k8s-test", "--data-dir=" + dataDir,
		"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=k8s-test=" + peerURL,
		"--quota-backend-bytes=" + strconv.Itoa(2<<30),
		"--unsafe-no-fsync", // test data: skip fsync, the disk is shared with other builds
	})
	if err != nil {
		return nil, err
	}
	if err := waitFor(c.etcd, readyTimeout, func() bool {
		return httpGet(http.DefaultClient, etcdURL+"/health", "", `"health":"true"`)
	}); err != nil {
		c.stop()
		return nil, err
	}

	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + p.dir, "--tls-cert-file=" + p.servingCert, "--tls-private-key-file=" + p.servingK,
		"--client-ca-file=" + p.caFile, "--token-auth-file=" + p.tokensFile,
		"--service-account-issuer=" + opts.SAIssuer,
		"--service-account-key-file=" + p.saPub, "--service-account-signing-key-file=" + p.saKeyFile,
		"--api-audiences=" + DefaultSAIssuer,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none", // required with --advertise-address=127.0.0.1
		"--allow-privileged=true",
		"--profiling=false",
	}
	if opts.Kubelet {
		args = append(args,
			"--authorization-mode=Node", // accumulates onto RBAC above ("Node,RBAC" is refused as a repeat)
			"--enable-admission-plugins=NodeRestriction",
			// the kubelet refuses a loopback node IP, so its InternalIP is one it does not listen on;
			// its name (e.g. localhost) resolves to 127.0.0.1
			"--kubelet-preferred-address-types=Hostname,InternalIP",
			"--kubelet-client-certificate="+p.adminCert, "--kubelet-client-key="+p.adminKey,
			"--kubelet-certificate-authority="+p.caFile,
		)
	}
	args = append(args, opts.ExtraAPIServerFlags...)
	c.startAPIServer = func() error {
		var err error
		c.apiserver, err = startProc("kube-apiserver", filepath.Join(dir, "apiserver-"+suffix+".log"),
			filepath.Join(bin, "kube-apiserver"), args)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(p.caPEM))
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer hc.CloseIdleConnections()
		return waitFor(c.apiserver, readyTimeout, func() bool {
			return httpGet(hc, c.URL+"/readyz", p.adminToken, "ok")
		})
	}
	if err := c.startAPIServer(); err != nil {
		c.stop()
		return nil, err
	}

	c.Config = &rest.Config{
		Host: c.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   []byte(p.caPEM),
			CertData: p.adminCertPEM,
			KeyData:  p.adminKeyPEM,
		},
		QPS:   200,
		Burst: 400,
	}
	c.Client, err = kubernetes.NewForConfig(c.Config)
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("k8s: clientset: %w", err)
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, []byte(kubeconfig(c.URL, p.caFile, p.adminToken)), 0o600); err != nil {
		c.stop()
		return nil, fmt.Errorf("k8s: kubeconfig: %w", err)
	}
	return c, nil
}

// waitFor polls ok every 100 ms until it holds, p exits, or timeout passes.
func waitFor(p *proc, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if p.exited() {
			if p.portInUse() {
				return fmt.Errorf("k8s: %s: %w", p.name, errPortTaken)
			}
			return fmt.Errorf("k8s: %s exited (%v):\n%s", p.name, p.err, p.logTail(30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("k8s: %s not ready after %s:\n%s", p.name, timeout, p.logTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func httpGet(hc *http.Client, url, token, want string) bool {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode == http.StatusOK && strings.Contains(string(b), want)
}

// stop terminates kube-apiserver, then etcd, and waits for both. Idempotent.
func (c *Cluster) stop() {
	c.apiserver.stop(10 * time.Second)
	c.etcd.stop(5 * time.Second)
}

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("k8s: free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func kubeconfig(server, caFile, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: tally-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: tally-test
  context: {cluster: tally-test, user: admin}
current-context: tally-test
`, server, caFile, token)
}

// callCtx bounds one API call made by a helper. It does not derive from t.Context(), which is
// already canceled when t.Cleanup functions run.
func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}
