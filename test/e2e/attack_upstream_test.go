package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// TestAttackLeafOutlivesUpstreamRoot is issue 8's fourth weakness through
// the binaries: an upstream bundle of [intermediate valid 48 h, root valid
// 2 h]; a 4 h mint must not outlive the root, and the server says, in its
// log and its metrics, that the upstream ends within a slot lifetime.
func TestAttackLeafOutlivesUpstreamRoot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Short-lived Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(2 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	require.NoError(t, err)
	root, err := x509.ParseCertificate(rootDER)
	require.NoError(t, err)
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Upstream Intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(interKey)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "upstream.pem"), filepath.Join(dir, "upstream-key.pem")
	chainPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})...)
	require.NoError(t, os.WriteFile(certFile, chainPEM, 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))

	s := harness.StartServer(t, "--upstream-cert-file", certFile, "--upstream-key-file", keyFile)
	key := harness.NewKey(t)
	resp, err := s.Admin(t).MintX509SVID(context.Background(), &tallyv1.MintX509SVIDRequest{
		SpiffeId: "spiffe://example.org/long", TtlSeconds: int64((4 * time.Hour).Seconds()),
		Csr: harness.CSR(t, key, []string{"spiffe://example.org/long"}, nil)})
	require.NoError(t, err)
	chain := parseChain(t, resp.GetCertChain())
	require.Len(t, chain, 3, "leaf, the slot's intermediate, the upstream intermediate")
	for i, c := range chain[:2] { // what Tally signed
		require.False(t, c.NotAfter.After(root.NotAfter), "certificate %d of the chain (%s) ends %s, after the root (%s)", i, c.Subject, c.NotAfter, root.NotAfter)
	}
	_, err = chain[0].Verify(x509.VerifyOptions{
		Roots: poolOf(root), Intermediates: poolOf(chain[1:]...),
		CurrentTime: chain[0].NotAfter.Add(-time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	require.NoError(t, err, "the leaf verifies until its last second")

	require.Contains(t, s.Log(), "Short-lived Root", "the warning names the certificate that ends first")
	metrics := scrape(t, s.HealthAddr)
	require.Contains(t, metrics, "tally_server_ca_upstream_expiring 1\n")
	require.Contains(t, metrics, "tally_server_ca_upstream_expiry_timestamp_seconds "+strconv.FormatFloat(float64(root.NotAfter.Unix()), 'g', -1, 64)+"\n")
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// scrape returns the text of http://addr/metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}
