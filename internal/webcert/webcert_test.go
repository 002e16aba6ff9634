package webcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/internal/httpserve"
)

var loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

func TestLocalCreatesAndPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "web")
	clk := clocktesting.NewFakePassiveClock(time.Now())
	l, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"localhost"}, IPAddresses: loopback, Clock: clk})
	require.NoError(t, err)

	ca := l.CA()
	require.Equal(t, CACommonName, ca.Subject.CommonName)
	require.True(t, ca.IsCA)
	require.Equal(t, x509.ECDSA, ca.PublicKeyAlgorithm)
	require.Equal(t, elliptic.P256(), ca.PublicKey.(*ecdsa.PublicKey).Curve)
	require.InDelta(t, 10*365*24, ca.NotAfter.Sub(ca.NotBefore).Hours(), 1)
	require.Equal(t, []string{"localhost"}, ca.PermittedDNSDomains)
	require.Equal(t, filepath.Join(dir, CAFileName), l.CAFile())

	for name, want := range map[string]os.FileMode{"": 0o700, caKeyFileName: 0o600, keyFileName: 0o600, CAFileName: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Equal(t, want, fi.Mode().Perm(), "mode of %q", name)
	}

	cert, err := l.GetCertificate(nil)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, name := range []string{"localhost", "127.0.0.1"} {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: clk.Now()})
		require.NoError(t, err, name)
	}
	require.InDelta(t, DefaultServingTTL.Hours(), cert.Leaf.NotAfter.Sub(clk.Now()).Hours(), 1)

	// Another run reuses both: a user trusts the CA once.
	again, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"localhost"}, IPAddresses: loopback, Clock: clk})
	require.NoError(t, err)
	require.True(t, again.CA().Equal(ca))
	cert2, err := again.GetCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, cert.Leaf.SerialNumber, cert2.Leaf.SerialNumber)
}

func TestLocalRenews(t *testing.T) {
	dir := t.TempDir()
	clk := clocktesting.NewFakePassiveClock(time.Now())
	l, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"localhost"}, TTL: 10 * time.Hour, Clock: clk})
	require.NoError(t, err)
	first, err := l.GetCertificate(nil)
	require.NoError(t, err)

	clk.SetTime(clk.Now().Add(4 * time.Hour)) // before the half way point less jitter
	same, err := l.GetCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, first.Leaf.SerialNumber, same.Leaf.SerialNumber)

	clk.SetTime(clk.Now().Add(2 * time.Hour)) // past it
	renewed, err := l.GetCertificate(nil)
	require.NoError(t, err)
	require.NotEqual(t, first.Leaf.SerialNumber, renewed.Leaf.SerialNumber)
	require.NoError(t, renewed.Leaf.CheckSignatureFrom(l.CA()))
	require.Equal(t, clk.Now().Add(10*time.Hour).Unix(), renewed.Leaf.NotAfter.Unix())

	// The renewal is kept: a restart serves it.
	again, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"localhost"}, TTL: 10 * time.Hour, Clock: clk})
	require.NoError(t, err)
	kept, err := again.GetCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, renewed.Leaf.SerialNumber, kept.Leaf.SerialNumber)
}

func TestLocalNamesChange(t *testing.T) {
	dir := t.TempDir()
	l, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"dash.example.org", "localhost"}})
	require.NoError(t, err)
	ca := l.CA()

	t.Run("fewer names: same CA, new serving certificate", func(t *testing.T) {
		l2, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"localhost"}})
		require.NoError(t, err)
		require.True(t, l2.CA().Equal(ca))
		cert, err := l2.GetCertificate(nil)
		require.NoError(t, err)
		require.Equal(t, []string{"localhost"}, cert.Leaf.DNSNames)
	})
	t.Run("a name beyond the constraints: a new CA", func(t *testing.T) {
		l3, err := NewLocal(LocalConfig{Dir: dir, DNSNames: []string{"localhost"}, IPAddresses: loopback})
		require.NoError(t, err)
		require.False(t, l3.CA().Equal(ca))
		cert, err := l3.GetCertificate(nil)
		require.NoError(t, err)
		require.NoError(t, cert.Leaf.CheckSignatureFrom(l3.CA()))
	})
}

func TestLocalConstrained(t *testing.T) {
	l, err := NewLocal(LocalConfig{Dir: t.TempDir(), IPAddresses: loopback})
	require.NoError(t, err)
	// A certificate the CA's key would sign for another name does not verify.
	ca := l.CA()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		tmpl x509.Certificate
	}{
		{"a DNS name", x509.Certificate{DNSNames: []string{"bank.example"}}},
		{"another IP", x509.Certificate{IPAddresses: []net.IP{net.IPv4(192, 0, 2, 1)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := tc.tmpl
			tmpl.SerialNumber = serial()
			tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca, key.Public(), l.caKey)
			require.NoError(t, err)
			leaf, err := x509.ParseCertificate(der)
			require.NoError(t, err)
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool})
			require.ErrorAs(t, err, new(x509.CertificateInvalidError))
		})
	}
}

func TestLoadReloads(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeSelfSigned(t, certFile, keyFile, "one.example")
	f, err := Load(certFile, keyFile, nil)
	require.NoError(t, err)
	cert, err := f.GetCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, "one.example", cert.Leaf.Subject.CommonName)

	writeSelfSigned(t, certFile, keyFile, "two.example")
	cert, err = f.GetCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, "two.example", cert.Leaf.Subject.CommonName)

	// Half way through a rewrite: the certificate of a key not yet written.
	writeSelfSigned(t, certFile, filepath.Join(dir, "other.key"), "three.example")
	cert, err = f.GetCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, "two.example", cert.Leaf.Subject.CommonName, "the last good pair")

	_, err = Load(certFile, filepath.Join(dir, "missing.key"), nil)
	require.Error(t, err)
}

// TestTLSConfig serves HTTPS with the local CA's certificate and fetches it
// as a client trusting only that CA would, with and without a client
// certificate.
func TestTLSConfig(t *testing.T) {
	l, err := NewLocal(LocalConfig{Dir: t.TempDir(), DNSNames: []string{"localhost"}, IPAddresses: loopback})
	require.NoError(t, err)

	clientCA, clientCAKey := newCA(t)
	clientPool := x509.NewCertPool()
	clientPool.AddCert(clientCA)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{
		TLSConfig: TLSConfig(l, func() *x509.CertPool { return clientPool }),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(r.TLS.PeerCertificates) > 0 {
				_, _ = w.Write([]byte(r.TLS.PeerCertificates[0].Subject.CommonName))
				return
			}
			_, _ = w.Write([]byte("anonymous"))
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- httpserve.Serve(ctx, srv, lis, true) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-served) })

	roots := x509.NewCertPool()
	roots.AddCert(l.CA())
	get := func(certs ...tls.Certificate) (string, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + lis.Addr().String() + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		return string(b[:n]), nil
	}
	body, err := get()
	require.NoError(t, err)
	require.Equal(t, "anonymous", body)

	body, err = get(clientCert(t, clientCA, clientCAKey, "admin"))
	require.NoError(t, err)
	require.Equal(t, "admin", body)

	strangerCA, strangerKey := newCA(t)
	_, err = get(clientCert(t, strangerCA, strangerKey, "stranger"))
	require.Error(t, err, "a client certificate from another CA is refused")
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return ca, key
}

func clientCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writeSelfSigned(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	// Through a rename, as the kubelet swaps a Secret volume's files.
	require.NoError(t, writeFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	require.NoError(t, writeFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
}
