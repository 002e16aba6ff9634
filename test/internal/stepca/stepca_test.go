package stepca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/stepcas"
	"github.com/stretchr/testify/require"
)

// The harness's step-ca issues, through smallstep's own stepcas client, the
// kind of certificate Tally asks it for: a CA for the trust domain's ID.
func TestStepCAIssuesIntermediates(t *testing.T) {
	c := Start(t, 24*time.Hour)
	password, err := os.ReadFile(c.PasswordFile)
	require.NoError(t, err)
	cas, err := stepcas.New(context.Background(), apiv1.Options{
		Type: apiv1.StepCAS, CertificateAuthority: c.URL, CertificateAuthorityFingerprint: c.Fingerprint,
		CertificateIssuer: &apiv1.CertificateIssuer{Type: "jwk", Provisioner: Provisioner, Password: string(password)},
	})
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	td, _ := url.Parse("spiffe://example.org")
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{td}}, key)
	require.NoError(t, err)
	csr, err := x509.ParseCertificateRequest(csrDER)
	require.NoError(t, err)
	resp, err := cas.CreateCertificate(&apiv1.CreateCertificateRequest{CSR: csr, Template: &x509.Certificate{URIs: csr.URIs}, Lifetime: time.Hour})
	require.NoError(t, err, c.Log())
	require.True(t, resp.Certificate.IsCA)
	require.Equal(t, 0, resp.Certificate.MaxPathLen)
	require.True(t, resp.Certificate.MaxPathLenZero)
	require.Equal(t, "spiffe://example.org", resp.Certificate.URIs[0].String())
	roots := x509.NewCertPool()
	roots.AddCert(c.Root)
	inter := x509.NewCertPool()
	for _, ch := range resp.CertificateChain {
		inter.AddCert(ch)
	}
	_, err = resp.Certificate.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	require.NoError(t, err)
}
