package ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"

	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/pemutil"

	"github.com/tallyid/tally/internal/logkey"
)

// upstreamCA is the CA that signs the authority's intermediates.
type upstreamCA struct {
	// certs is the upstream CA certificate followed by its chain; the last
	// one is the trust anchor.
	certs  []*x509.Certificate
	signer crypto.Signer
}

// notAfter is when the first certificate of the chain expires: nothing that
// chains through it verifies after that.
func (u *upstreamCA) notAfter() time.Time { return firstToExpire(u.certs).NotAfter }

// loadUpstream reads UpstreamCertFile and UpstreamKeyFile (the key through
// softkms) and checks they form a usable CA at now: the first certificate is
// a CA matching the key, and every certificate of the chain is valid now and
// still for X509SVIDTTL. It records the chain's expiry for UpstreamNotAfter,
// and warns if the chain expires within CATTL, since the X.509 keys it signs
// are then shortened.
func (a *Authority) loadUpstream(now time.Time) (*upstreamCA, error) {
	file := a.cfg.UpstreamCertFile
	certs, err := pemutil.ReadCertificateBundle(file)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream certificate %s: %w", file, err)
	}
	signer, err := a.kms.CreateSigner(&kmsapi.CreateSignerRequest{SigningKey: a.cfg.UpstreamKeyFile})
	if err != nil {
		return nil, fmt.Errorf("ca: upstream key %s: %w", a.cfg.UpstreamKeyFile, err)
	}
	ca := certs[0]
	switch {
	case !ca.BasicConstraintsValid || !ca.IsCA:
		return nil, fmt.Errorf("ca: upstream certificate %s is not a CA certificate", file)
	case ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("ca: upstream certificate %s lacks keyCertSign", file)
	case !publicKeysEqual(signer.Public(), ca.PublicKey):
		return nil, fmt.Errorf("ca: upstream key %s does not match certificate %s", a.cfg.UpstreamKeyFile, file)
	}
	up := &upstreamCA{certs: certs, signer: signer}
	notAfter := up.notAfter()
	a.upstreamNotAfter.Store(&notAfter)
	for i, c := range certs {
		name := fmt.Sprintf("certificate %d of %d (%s)", i+1, len(certs), c.Subject)
		switch {
		case now.Before(c.NotBefore):
			return nil, fmt.Errorf("ca: upstream certificate %s: %s is not valid before %s", file, name, c.NotBefore)
		case !now.Before(c.NotAfter):
			return nil, fmt.Errorf("ca: upstream certificate %s: %s expired at %s", file, name, c.NotAfter)
		case !now.Add(a.cfg.X509SVIDTTL).Before(c.NotAfter):
			return nil, fmt.Errorf("ca: upstream certificate %s: %s expires at %s, before an X509-SVID issued now would (X509SVIDTTL %s)",
				file, name, c.NotAfter, a.cfg.X509SVIDTTL)
		}
	}
	if notAfter.Before(now.Add(a.cfg.CATTL)) {
		a.log.Warn("ca upstream chain expires within CATTL; x509 keys end with it",
			logkey.Path, file, logkey.Subject, firstToExpire(certs).Subject.String(), logkey.NotAfter, notAfter)
	}
	return up, nil
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

// firstToExpire returns the certificate of chain, which is not empty, that
// expires first.
func firstToExpire(chain []*x509.Certificate) *x509.Certificate {
	first := chain[0]
	for _, c := range chain[1:] {
		if c.NotAfter.Before(first.NotAfter) {
			first = c
		}
	}
	return first
}
