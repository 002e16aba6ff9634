package agentapp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/agent"
)

// storeAgentSVID writes an agent SVID valid until notAfter where a
// Session looks for it in dataDir.
func storeAgentSVID(t *testing.T, dataDir string, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	id := spiffeid.RequireFromString("spiffe://example.org/tally/agent/join_token/x")
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(7),
		NotBefore: notAfter.Add(-time.Hour), NotAfter: notAfter, URIs: []*url.URL{id.URL()},
		KeyUsage: x509.KeyUsageDigitalSignature}, &x509.Certificate{SerialNumber: big.NewInt(1)}, key.Public(), key)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "agent-svid.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "agent-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600))
}

// writeToken writes a JWT expiring at exp to path.
func writeToken(t *testing.T, path string, exp time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	require.NoError(t, err)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Expiry: jwt.NewNumericDate(exp)}).Serialize()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, []byte(tok), 0o600))
}

// TestDegradedWhenTheAgentCannotAttestAgain: /healthz says degraded once
// the agent SVID expired and no credential can replace it.
func TestDegradedWhenTheAgentCannotAttestAgain(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	for _, tc := range []struct {
		name     string
		svid     time.Duration // expiry, after now
		token    time.Duration // k8s_psat token expiry, after now; 0: join_token
		degraded string
	}{
		{"valid SVID", time.Minute, 0, ""},
		{"expired SVID, join token", -time.Minute, 0, "a join token attests only once"},
		{"expired SVID, valid token", -time.Minute, time.Minute, ""},
		{"both expired", -time.Minute, -time.Second, "projected service-account token expired"},
		{"valid SVID, expired token", time.Minute, -time.Second, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(now)
			dir := t.TempDir()
			storeAgentSVID(t, dir, now.Add(tc.svid))
			s, err := agent.OpenSession(agent.SessionConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
				ServerAddress: "127.0.0.1:1", DataDir: dir, Clock: clk})
			require.NoError(t, err)
			defer s.Close()
			c := &components{session: s}
			if tc.token != 0 {
				path := filepath.Join(dir, "token")
				writeToken(t, path, now.Add(tc.token))
				c.token = agent.NewTokenExpiry(agent.TokenExpiryConfig{Path: path, Clock: clk})
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error)
				go func() { done <- c.token.Run(ctx) }()
				require.Eventually(t, func() bool { return !c.token.NotAfter().IsZero() }, 10*time.Second, time.Millisecond)
				cancel()
				require.NoError(t, <-done)
			}
			a := &Agent{cfg: Config{Clock: clk}}
			got := a.degraded(c)
			if tc.degraded == "" {
				require.Empty(t, got)
				return
			}
			require.Len(t, got, 1)
			require.Contains(t, got[0], tc.degraded)
		})
	}
}

func TestConfigReportAndTaintKeys(t *testing.T) {
	def := DefaultConfig()
	require.Equal(t, 30*time.Second, def.TaintJitter)
	require.Equal(t, 5*time.Second, def.ReportInterval)
	require.Equal(t, time.Minute, def.ReportHeartbeat)
	c := validConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	BindFlags(fs, &c)
	require.NoError(t, fs.Parse([]string{"--taint-jitter", "10s", "--report-interval", "2s", "--report-heartbeat", "30s"}))
	require.Equal(t, 10*time.Second, c.TaintJitter)
	require.Equal(t, 2*time.Second, c.ReportInterval)
	require.Equal(t, 30*time.Second, c.ReportHeartbeat)
	require.NoError(t, c.Validate())
	for _, tt := range []struct {
		name string
		edit func(*Config)
		key  string
	}{
		{"zero jitter", func(c *Config) { c.TaintJitter = 0 }, "taint_jitter"},
		{"zero interval", func(c *Config) { c.ReportInterval = 0 }, "report_interval"},
		{"heartbeat below interval", func(c *Config) { c.ReportHeartbeat = time.Second }, "report_heartbeat"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.edit(&c)
			require.ErrorContains(t, c.Validate(), tt.key)
		})
	}
}
