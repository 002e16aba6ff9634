package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"
)

// rate runs op on workers goroutines for d and returns operations per
// second. Each op call may count for n operations.
func rate(t testing.TB, d time.Duration, workers int, op func() (n int, err error)) float64 {
	t.Helper()
	var count atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				n, err := op()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				count.Add(int64(n))
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		require.NoError(t, err)
	}
	return float64(count.Load()) / time.Since(start).Seconds()
}

// x509Floor is the raw cost of minting: parse and check a CSR, then
// x509.CreateCertificate with a P-256 CA key.
type x509Floor struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	csr    []byte
}

func newX509Floor(t testing.TB) *x509Floor {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "floor"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	require.NoError(t, err)
	caCert, _ := x509.ParseCertificate(der)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://example.org/bench")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	require.NoError(t, err)
	return &x509Floor{caCert: caCert, caKey: caKey, csr: csr}
}

func (f *x509Floor) mint() (int, error) {
	csr, err := x509.ParseCertificateRequest(f.csr)
	if err != nil {
		return 0, err
	}
	if err := csr.CheckSignature(); err != nil {
		return 0, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, URIs: csr.URIs, NotBefore: now, NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	_, err = x509.CreateCertificate(rand.Reader, tmpl, f.caCert, csr.PublicKey, f.caKey)
	return 1, err
}

// jwtFloor is the raw cost of an ES256 JWS over JWT-SVID claims.
func jwtFloor(t testing.TB) func() (int, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k"}}, (&jose.SignerOptions{}).WithType("JWT"))
	require.NoError(t, err)
	return func() (int, error) {
		payload := fmt.Sprintf(`{"sub":"spiffe://example.org/bench","aud":["a"],"exp":%d,"iat":%d}`, time.Now().Add(5*time.Minute).Unix(), time.Now().Unix())
		jws, err := signer.Sign([]byte(payload))
		if err != nil {
			return 0, err
		}
		_, err = jws.CompactSerialize()
		return 1, err
	}
}

// table prints rows aligned to stdout and, if $TALLY_BENCH_OUT is set,
// appends them to that file.
func table(t testing.TB, title string, header string, rows []string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "\n## %s\n\n", title)
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, r)
	}
	w.Flush()
	note(t, b.String())
}

// note prints s and appends it to $TALLY_BENCH_OUT when set.
func note(t testing.TB, s string) {
	t.Helper()
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	fmt.Print(s)
	if out := os.Getenv("TALLY_BENCH_OUT"); out != "" {
		f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		require.NoError(t, err)
		defer f.Close()
		_, _ = f.WriteString(s)
	}
}
