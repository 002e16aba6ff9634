package ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"

	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/pemutil"
)

// upstreamCA is the CA that signs the authority's intermediates.
type upstreamCA struct {
	// certs is the upstream CA certificate followed by its chain; the last
	// one is the trust anchor.
	certs  []*x509.Certificate
	signer crypto.Signer
}

// loadUpstream reads UpstreamCertFile and UpstreamKeyFile (the key through
// softkms) and checks they form a usable CA at now.
func (a *Authority) loadUpstream(now time.Time) (*upstreamCA, error) {
	certs, err := pemutil.ReadCertificateBundle(a.cfg.UpstreamCertFile)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream certificate %s: %w", a.cfg.UpstreamCertFile, err)
	}
	signer, err := a.kms.CreateSigner(&kmsapi.CreateSignerRequest{SigningKey: a.cfg.UpstreamKeyFile})
	if err != nil {
		return nil, fmt.Errorf("ca: upstream key %s: %w", a.cfg.UpstreamKeyFile, err)
	}
	ca := certs[0]
	switch {
	case !ca.BasicConstraintsValid || !ca.IsCA:
		return nil, fmt.Errorf("ca: upstream certificate %s is not a CA certificate", a.cfg.UpstreamCertFile)
	case ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("ca: upstream certificate %s lacks keyCertSign", a.cfg.UpstreamCertFile)
	case !publicKeysEqual(signer.Public(), ca.PublicKey):
		return nil, fmt.Errorf("ca: upstream key %s does not match certificate %s", a.cfg.UpstreamKeyFile, a.cfg.UpstreamCertFile)
	case now.Before(ca.NotBefore):
		return nil, fmt.Errorf("ca: upstream certificate %s is not valid before %s", a.cfg.UpstreamCertFile, ca.NotBefore)
	case !now.Add(a.cfg.X509SVIDTTL).Before(ca.NotAfter):
		return nil, fmt.Errorf("ca: upstream certificate %s expires at %s, before an X509-SVID issued now would (X509SVIDTTL %s)",
			a.cfg.UpstreamCertFile, ca.NotAfter, a.cfg.X509SVIDTTL)
	}
	return &upstreamCA{certs: certs, signer: signer}, nil
}

// verify checks that cert chains to the upstream anchor at now.
func (u *upstreamCA) verify(cert *x509.Certificate, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(u.certs[len(u.certs)-1])
	inter := x509.NewCertPool()
	for _, c := range u.certs[:len(u.certs)-1] {
		inter.AddCert(c)
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("ca: intermediate does not verify against the upstream chain: %w", err)
	}
	return nil
}
