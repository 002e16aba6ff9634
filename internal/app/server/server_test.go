package serverapp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/internal/config"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	return lis.Addr().String()
}

// TestBuildClosesWhatItOpenedOnFailure: when the last address cannot be
// listened on, everything build opened before is closed again: the store
// (badger's directory lock), the admin socket file and the other listeners.
func TestBuildClosesWhatItOpenedOnFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.TrustDomain = "example.org"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.BindAddress, cfg.HTTPAddress, cfg.WebAddress = freeAddr(t), freeAddr(t), freeAddr(t)
	cfg.HealthAddress = busy.Addr().String()
	s, err := New(cfg)
	require.NoError(t, err)

	err = s.Run(context.Background())
	require.ErrorContains(t, err, "health_address")

	_, err = os.Stat(cfg.AdminSocket)
	require.ErrorIs(t, err, os.ErrNotExist, "the admin socket is removed")
	for _, addr := range []string{cfg.BindAddress, cfg.HTTPAddress} {
		lis, err := net.Listen("tcp", addr)
		require.NoError(t, err, "%s is free again", addr)
		lis.Close()
	}
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(cfg.DataDir, "store")})
	require.NoError(t, err, "the store was closed (badger locks its directory)")
	require.NoError(t, st.Close())
}

func TestNewRefusesABadConfig(t *testing.T) {
	cfg := DefaultConfig()
	_, err := New(cfg)
	require.ErrorContains(t, err, "trust_domain")
}

// startInProcess runs a server in this process on clk and returns its
// config once it serves.
func startInProcess(t *testing.T, clk *clocktesting.FakeClock) Config {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.TrustDomain = "example.org"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.BindAddress, cfg.HTTPAddress, cfg.HealthAddress, cfg.WebAddress = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfg.Clock = clk
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	require.Eventually(t, s.ready.Load, 30*time.Second, 10*time.Millisecond)
	return cfg
}

// TestJoinTokenExpires: a join token is refused once its TTL has passed on
// the server's clock (a fake one: no test waits for real time to pass).
func TestJoinTokenExpires(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	cfg := startInProcess(t, clk)
	adminConn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer adminConn.Close()
	admin := tallyv1.NewAdminClient(adminConn)
	ctx := context.Background()
	resp, err := admin.CreateJoinToken(ctx, &tallyv1.CreateJoinTokenRequest{TtlSeconds: 30})
	require.NoError(t, err)
	raw, err := admin.GetBundle(ctx, &tallyv1.GetBundleRequest{})
	require.NoError(t, err)
	bundle, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), raw.GetSpiffeBundle())
	require.NoError(t, err)
	tlsCfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/tally/server")))
	nodeConn, err := grpc.NewClient(cfg.BindAddress, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	require.NoError(t, err)
	defer nodeConn.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	require.NoError(t, err)

	clk.Step(31 * time.Second) // past the TTL, before the minutely pruning of expired tokens
	_, err = tallyv1.NewNodeClient(nodeConn).AttestAgent(ctx, &tallyv1.AttestAgentRequest{
		AttestationType: "join_token", AttestationData: []byte(resp.GetToken()), Csr: csr})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "expired")
}

// TestConfigRefusesBadValues: each bad value is refused with an error
// naming its key, and nothing starts.
func TestConfigRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		key  string
		edit func(*Config)
	}{
		{"psat_kube_qps", func(c *Config) { c.PSATKubeQPS = 0 }},
		{"psat_kube_qps", func(c *Config) { c.PSATKubeQPS = -3 }},
		{"psat_kube_burst", func(c *Config) { c.PSATKubeBurst = 0 }},
		{"trust_domain", func(c *Config) { c.TrustDomain = "Example.org/x" }},
		{"log_level", func(c *Config) { c.LogLevel = "loud" }},
		{"web_address", func(c *Config) { c.WebAddress = "no-port" }},
		{"web_cert_file and web_key_file", func(c *Config) { c.WebCertFile = "/tmp/cert.pem" }},
		{"web_dns_names", func(c *Config) { c.WebDNSNames = nil }},
		{"web_dns_names", func(c *Config) { c.WebDNSNames = []string{"under_score.example"} }},
		{"upstream_step_ca", func(c *Config) { c.UpstreamStepCAURL = "https://ca.example:9000" }},
		{"upstream_step_ca", func(c *Config) {
			c.UpstreamStepCAURL, c.UpstreamStepCAFingerprint = "http://ca.example:9000", strings.Repeat("ab", 32)
			c.UpstreamStepCAProvisioner, c.UpstreamStepCAPasswordFile = "tally", "/tmp/pw"
		}},
		{"upstream_step_ca", func(c *Config) {
			c.UpstreamStepCAURL, c.UpstreamStepCAFingerprint = "https://ca.example:9000", "not-hex"
			c.UpstreamStepCAProvisioner, c.UpstreamStepCAPasswordFile = "tally", "/tmp/pw"
		}},
		{"not both", func(c *Config) {
			c.UpstreamStepCAURL, c.UpstreamStepCAFingerprint = "https://ca.example:9000", strings.Repeat("ab", 32)
			c.UpstreamStepCAProvisioner, c.UpstreamStepCAPasswordFile = "tally", "/tmp/pw"
			c.UpstreamCertFile, c.UpstreamKeyFile = "/tmp/up.pem", "/tmp/up.key"
		}},
		{"token_ttl", func(c *Config) { c.Exchange.TokenTTL = time.Hour }},
		{"registrar needs psat_cluster", func(c *Config) { c.Registrar = true }},
		{"bundle_configmap needs psat_cluster", func(c *Config) { c.BundleConfigMap = "tally/tally-bundle" }},
		{"clusters needs psat_cluster", func(c *Config) { c.Clusters = []ClusterConfig{{Name: "b"}} }},
		{"issuer is required", func(c *Config) {
			c.PSATCluster, c.PSATServiceAccounts = "a", []string{"tally:agent"}
			c.Clusters = []ClusterConfig{{Name: "b", Kubeconfig: "/k", Issuer: "https://b", ServiceAccounts: []string{"tally:agent"}}}
		}},
		{"name used twice", func(c *Config) {
			c.PSATCluster, c.PSATIssuer, c.PSATServiceAccounts = "a", "https://a", []string{"tally:agent"}
			c.Clusters = []ClusterConfig{{Name: "a", Kubeconfig: "/k", Issuer: "https://b", ServiceAccounts: []string{"tally:agent"}}}
		}},
		{"used twice", func(c *Config) {
			c.PSATCluster, c.PSATIssuer, c.PSATServiceAccounts = "a", "https://a", []string{"tally:agent"}
			c.Clusters = []ClusterConfig{{Name: "b", Kubeconfig: "/k", Issuer: "https://a", ServiceAccounts: []string{"tally:agent"}}}
		}},
		{"kubeconfig is required", func(c *Config) {
			c.PSATCluster, c.PSATIssuer, c.PSATServiceAccounts = "a", "https://a", []string{"tally:agent"}
			c.Clusters = []ClusterConfig{{Name: "b", Issuer: "https://b", ServiceAccounts: []string{"tally:agent"}}}
		}},
		{"path segment", func(c *Config) {
			c.PSATCluster, c.PSATIssuer, c.PSATServiceAccounts = "a", "https://a", []string{"tally:agent"}
			c.Clusters = []ClusterConfig{{Name: "b/c", Kubeconfig: "/k", Issuer: "https://b", ServiceAccounts: []string{"tally:agent"}}}
		}},
		{"bundle_configmap", func(c *Config) {
			c.PSATCluster, c.PSATServiceAccounts, c.BundleConfigMap = "prod", []string{"tally:tally-agent"}, "no-slash"
		}},
		{"bundle_configmap", func(c *Config) {
			c.PSATCluster, c.PSATServiceAccounts, c.BundleConfigMap = "prod", []string{"tally:tally-agent"}, "Bad_NS/x"
		}},
		{"registrar_lease_namespace needs psat_cluster", func(c *Config) { c.RegistrarLeaseNamespace = "tally" }},
		{"registrar_lease_namespace", func(c *Config) {
			c.PSATCluster, c.PSATServiceAccounts, c.RegistrarLeaseNamespace = "prod", []string{"tally:tally-agent"}, "Not_A_Namespace"
		}},
		{"registrar_lease_name", func(c *Config) {
			c.PSATCluster, c.PSATServiceAccounts, c.RegistrarLeaseNamespace, c.RegistrarLeaseName = "prod", []string{"tally:tally-agent"}, "tally", ""
		}},
		{"psat_service_accounts is required", func(c *Config) { c.PSATCluster = "prod" }},
		{"psat_service_accounts", func(c *Config) { c.PSATCluster, c.PSATServiceAccounts = "prod", []string{"no-colon"} }},
	} {
		cfg := DefaultConfig()
		cfg.TrustDomain = "example.org"
		tc.edit(&cfg)
		_, err := New(cfg)
		require.ErrorContains(t, err, tc.key, tc.key)
	}
}

// An unknown key inside a clusters entry is refused, naming it.
func TestConfigClustersStrict(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.yaml")
	require.NoError(t, os.WriteFile(path, []byte("trust_domain: example.org\nclusters:\n  - name: b\n    kubecfg: /k\n"), 0o600))
	var cfg Config
	require.ErrorContains(t, config.LoadYAML(path, &cfg), "kubecfg")
}
