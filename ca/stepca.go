package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/stepcas"
	kmsapi "go.step.sm/crypto/kms/apiv1"
)

// StepCA names an upstream step-ca that signs the authority's X.509
// intermediates, through smallstep's stepcas client and one of its JWK
// provisioners. The provisioner's x509 template must allow a CA certificate
// with path length 0 for the trust domain's ID (docs/upstream.md).
type StepCA struct {
	// URL is the step-ca's address, https://host:port.
	URL string
	// Fingerprint is the hex SHA-256 of step-ca's root certificate: the
	// client trusts step-ca by it, and the root is the bundle's anchor.
	Fingerprint string
	// Provisioner is the JWK provisioner's name; PasswordFile holds the
	// password of its encrypted key, which step-ca serves.
	Provisioner  string
	PasswordFile string
}

// Validate checks the fields' form (not that step-ca answers).
func (s *StepCA) Validate() error {
	switch {
	case !strings.HasPrefix(s.URL, "https://"):
		return fmt.Errorf("URL %q: want https://host:port", s.URL)
	case len(s.Fingerprint) != 64 || strings.Trim(strings.ToLower(s.Fingerprint), "0123456789abcdef") != "":
		return fmt.Errorf("fingerprint %q: want the hex SHA-256 of the root certificate", s.Fingerprint)
	case s.Provisioner == "" || s.PasswordFile == "":
		return fmt.Errorf("provisioner and password file required")
	}
	return nil
}

// stepCA is a connected step-ca client and its root.
type stepCA struct {
	cas  *stepcas.StepCAS
	root *x509.Certificate
}

// connectStepCA returns the step-ca client, connecting on first use (and
// again after a failure): a step-ca that is down when the server starts
// delays the next X.509 key, not the start. Callers hold a.mu.
func (a *Authority) connectStepCA(ctx context.Context) (*stepCA, error) {
	if a.stepca != nil {
		return a.stepca, nil
	}
	cfg := a.cfg.StepCA
	password, err := os.ReadFile(cfg.PasswordFile)
	if err != nil {
		return nil, fmt.Errorf("ca: step-ca password: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	opts := apiv1.Options{
		Type:                            apiv1.StepCAS,
		CertificateAuthority:            cfg.URL,
		CertificateAuthorityFingerprint: strings.ToLower(cfg.Fingerprint),
		CertificateIssuer: &apiv1.CertificateIssuer{Type: "jwk", Provisioner: cfg.Provisioner,
			Password: strings.TrimRight(string(password), "\r\n")},
	}
	cas, err := stepcas.New(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: step-ca %s: %w", ErrUpstream, cfg.URL, err)
	}
	opts.IsCAGetter = true
	getter, err := stepcas.New(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: step-ca %s: %w", ErrUpstream, cfg.URL, err)
	}
	root, err := getter.GetCertificateAuthority(&apiv1.GetCertificateAuthorityRequest{})
	if err != nil {
		return nil, fmt.Errorf("%w: step-ca %s: root: %w", ErrUpstream, cfg.URL, err)
	}
	a.stepca = &stepCA{cas: cas, root: root.RootCertificate}
	return a.stepca, nil
}

// newStepCASlot makes a new X.509 key whose CA certificate step-ca signs.
// The slot is PREPARED; its anchor is step-ca's root.
func (a *Authority) newStepCASlot(ctx context.Context, now time.Time) (*slot, error) {
	up, err := a.connectStepCA(ctx)
	if err != nil {
		return nil, err
	}
	key, err := a.kms.CreateKey(&kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256})
	if err != nil {
		return nil, fmt.Errorf("ca: create x509 key: %w", err)
	}
	signer, err := a.kms.CreateSigner(&key.CreateSignerRequest)
	if err != nil {
		return nil, fmt.Errorf("ca: x509 key: %w", err)
	}
	tmpl := caTemplate(a.td, now.Add(-backdate), now.Add(a.cfg.CATTL))
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: tmpl.Subject, URIs: tmpl.URIs}, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: x509 csr: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("ca: x509 csr: %w", err)
	}
	resp, err := up.cas.CreateCertificate(&apiv1.CreateCertificateRequest{CSR: csr, Template: tmpl, Lifetime: a.cfg.CATTL})
	if err != nil {
		a.stepca = nil // reconnect next time: step-ca may have moved or restarted
		return nil, fmt.Errorf("%w: step-ca %s: sign intermediate: %w", ErrUpstream, a.cfg.StepCA.URL, err)
	}
	cert := resp.Certificate
	switch {
	case !cert.IsCA || !cert.BasicConstraintsValid:
		return nil, fmt.Errorf("ca: step-ca signed a certificate that is not a CA: check the provisioner's x509 template")
	case cert.MaxPathLen != 0 || !cert.MaxPathLenZero:
		return nil, fmt.Errorf("ca: step-ca signed a CA without path length 0: check the provisioner's x509 template")
	case !publicKeysEqual(cert.PublicKey, signer.Public()):
		return nil, fmt.Errorf("ca: step-ca signed another key")
	case len(cert.URIs) != 1 || cert.URIs[0].String() != a.td.ID().String():
		return nil, fmt.Errorf("ca: step-ca's certificate does not name %s alone", a.td.ID())
	}
	chain := resp.CertificateChain
	if n := len(chain); n == 0 || !chain[n-1].Equal(up.root) {
		chain = append(chain, up.root)
	}
	u := &upstreamCA{certs: chain}
	if err := u.verify(cert, now); err != nil {
		return nil, err
	}
	notAfter := u.notAfter()
	a.upstreamNotAfter.Store(&notAfter)
	s := &slot{
		kind:      KindX509,
		status:    StatusPrepared,
		id:        hex.EncodeToString(cert.SubjectKeyId),
		createdAt: now,
		notBefore: cert.NotBefore,
		cert:      cert,
		upstream:  chain,
		signer:    signer,
	}
	s.notAfter = s.chainNotAfter()
	if s.keyFile, err = a.writeKey(KindX509, key.PrivateKey); err != nil {
		return nil, err
	}
	return s, nil
}
