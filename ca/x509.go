package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/x509util"

	"github.com/tallyid/tally/internal/dnsname"
)

const (
	// organization is the subject O of every certificate the authority makes.
	organization = "Tally"
	// backdate is subtracted from NotBefore to tolerate clock skew.
	backdate = 10 * time.Second
	// minRSABits is the smallest RSA key the authority certifies.
	minRSABits = 2048
	// maxCommonName is ub-common-name (RFC 5280).
	maxCommonName = 64
)

// X509SVIDParams says what to put in an X509-SVID.
type X509SVIDParams struct {
	// PublicKey is the workload's key: ECDSA P-256/P-384/P-521, RSA of at
	// least 2048 bits, or Ed25519.
	PublicKey crypto.PublicKey
	// ID is the SPIFFE ID, in the authority's trust domain, with a path.
	ID spiffeid.ID
	// DNSNames are added as DNS SANs; the first is also the subject CN if
	// it fits (64 characters).
	DNSNames []string
	// TTL is the lifetime; 0 means Config.X509SVIDTTL; at most CATTL/6.
	// The certificate never outlives any certificate of its chain: the CA
	// certificate that signs it and, in upstream mode, every upstream
	// certificate up to and including the trust anchor.
	TTL time.Duration
}

// x509Signer signs leaves with the active X.509 slot. It is immutable and
// safe for concurrent use.
type x509Signer struct {
	id            string
	cas           *softcas.SoftCAS
	notAfter      time.Time
	intermediates []*x509.Certificate
}

func newX509Signer(ctx context.Context, s *slot) (*x509Signer, error) {
	cas, err := softcas.New(ctx, apiv1.Options{
		CertificateChain: []*x509.Certificate{s.cert},
		Signer:           s.signer,
	})
	if err != nil {
		return nil, fmt.Errorf("ca: x509 slot %s: %w", s.id, err)
	}
	return &x509Signer{id: s.id, cas: cas, notAfter: s.notAfter, intermediates: s.intermediates()}, nil
}

// SignX509SVID signs an X509-SVID for p.PublicKey with the active X.509 key
// and returns the leaf followed by the intermediates up to (not including)
// the trust anchor in the bundle. The leaf has exactly one URI SAN (p.ID), the
// DNS SANs of p, cA=false, a critical key usage of digitalSignature (plus
// keyEncipherment for RSA keys), EKU serverAuth and clientAuth, a random
// serial, and NotBefore backdated by 10s. Errors wrap ErrInvalidParams for
// bad params and ErrNotReady without a usable key. Safe for concurrent use.
func (a *Authority) SignX509SVID(ctx context.Context, p X509SVIDParams) (chain []*x509.Certificate, err error) {
	ttl, err := a.svidTTL(p.TTL, a.cfg.X509SVIDTTL)
	if err != nil {
		return nil, err
	}
	if err := a.checkSVIDID(p.ID); err != nil {
		return nil, err
	}
	for _, name := range p.DNSNames {
		if err := checkDNSName(name); err != nil {
			return nil, err
		}
	}
	keyUsage, err := leafKeyUsage(p.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ca: sign x509-svid: %w", err)
	}
	s := a.x509.Load()
	now := a.clock.Now()
	if s == nil || !now.Before(s.notAfter) {
		return nil, fmt.Errorf("%w: x509 key expired or missing", ErrNotReady)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(s.notAfter) {
		notAfter = s.notAfter
	}
	subject := pkix.Name{Organization: []string{organization}}
	if len(p.DNSNames) > 0 && len(p.DNSNames[0]) <= maxCommonName {
		subject.CommonName = p.DNSNames[0]
	}
	resp, err := s.cas.CreateCertificate(&apiv1.CreateCertificateRequest{
		Template: &x509.Certificate{
			Subject:               subject,
			URIs:                  []*url.URL{p.ID.URL()},
			DNSNames:              p.DNSNames,
			NotBefore:             now.Add(-backdate),
			NotAfter:              notAfter,
			KeyUsage:              keyUsage,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
			PublicKey:             p.PublicKey,
		},
		Lifetime: ttl,
		Backdate: backdate,
	})
	if err != nil {
		return nil, fmt.Errorf("ca: sign x509-svid for %s: %w", p.ID, err)
	}
	chain = make([]*x509.Certificate, 0, 1+len(s.intermediates))
	chain = append(chain, resp.Certificate)
	return append(chain, s.intermediates...), nil
}

// newX509Slot makes a new X.509 CA key and certificate, self-signed or
// signed by the upstream CA, and writes the key to KeyDir. The slot is
// PREPARED. Its certificate is valid for CATTL, or until the upstream chain
// expires if that is sooner; rotation then follows the shortened lifetime.
func (a *Authority) newX509Slot(now time.Time) (*slot, error) {
	notAfter := now.Add(a.cfg.CATTL)
	req := &apiv1.CreateCertificateAuthorityRequest{
		Name:      "tally-x509-ca",
		Type:      apiv1.RootCA,
		Lifetime:  a.cfg.CATTL,
		Backdate:  backdate,
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
	}
	var up *upstreamCA
	if a.cfg.UpstreamCertFile != "" {
		var err error
		if up, err = a.loadUpstream(now); err != nil {
			return nil, err
		}
		if upNotAfter := up.notAfter(); upNotAfter.Before(notAfter) {
			notAfter = upNotAfter // loadUpstream warned
		}
		req.Type = apiv1.IntermediateCA
		req.Parent = &apiv1.CreateCertificateAuthorityResponse{
			Certificate:      up.certs[0],
			CertificateChain: up.certs[1:],
			Signer:           up.signer,
		}
	}
	req.Template = caTemplate(a.td, now.Add(-backdate), notAfter)
	resp, err := a.creator.CreateCertificateAuthority(req)
	if err != nil {
		return nil, fmt.Errorf("ca: create x509 ca: %w", err)
	}
	cert := resp.Certificate
	s := &slot{
		kind:      KindX509,
		status:    StatusPrepared,
		id:        hex.EncodeToString(cert.SubjectKeyId),
		createdAt: now,
		notBefore: cert.NotBefore,
		cert:      cert,
		signer:    resp.Signer,
	}
	if up != nil {
		if err := up.verify(cert, now); err != nil {
			return nil, err
		}
		s.upstream = up.certs
	}
	s.notAfter = s.chainNotAfter()
	if s.keyFile, err = a.writeKey(KindX509, resp.PrivateKey); err != nil {
		return nil, err
	}
	return s, nil
}

// caTemplate is the template of the authority's CA certificates: cA=true
// with path length 0 (it signs leaves only), keyCertSign and cRLSign, the
// trust domain's ID (no path) as the only URI SAN, subject O=Tally with a
// random serialNumber so that successive CAs have distinct subjects.
func caTemplate(td spiffeid.TrustDomain, notBefore, notAfter time.Time) *x509.Certificate {
	c := x509util.Certificate{
		Subject: x509util.Subject{
			Organization: x509util.MultiString{organization},
			SerialNumber: strings.ToLower(rand.Text()),
		},
		URIs:             x509util.MultiURL{td.ID().URL()},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 0},
	}
	return c.GetCertificate()
}

// leafKeyUsage checks the workload key and returns the key usage its
// certificate gets.
func leafKeyUsage(pub crypto.PublicKey) (x509.KeyUsage, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return x509.KeyUsageDigitalSignature, nil
		}
		return 0, fmt.Errorf("%w: unsupported ecdsa curve %s", ErrInvalidParams, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return 0, fmt.Errorf("%w: rsa key of %d bits, want at least %d", ErrInvalidParams, k.N.BitLen(), minRSABits)
		}
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil
	case ed25519.PublicKey:
		return x509.KeyUsageDigitalSignature, nil
	case nil:
		return 0, fmt.Errorf("%w: public key required", ErrInvalidParams)
	default:
		return 0, fmt.Errorf("%w: unsupported public key type %T", ErrInvalidParams, pub)
	}
}

// checkDNSName applies the one DNS name rule (internal/dnsname).
func checkDNSName(name string) error {
	if err := dnsname.Check(name); err != nil {
		return fmt.Errorf("%w: invalid dns name %q: %w", ErrInvalidParams, name, err)
	}
	return nil
}

// checkSVIDID accepts IDs of the trust domain with a non-root path.
func (a *Authority) checkSVIDID(id spiffeid.ID) error {
	switch {
	case id.IsZero():
		return fmt.Errorf("%w: spiffe id required", ErrInvalidParams)
	case id.TrustDomain() != a.td:
		return fmt.Errorf("%w: spiffe id %s is not in trust domain %s", ErrInvalidParams, id, a.td)
	case id.Path() == "":
		return fmt.Errorf("%w: spiffe id %s has no path; only the trust domain's signing keys use it", ErrInvalidParams, id)
	}
	return nil
}

// svidTTL resolves a requested TTL: 0 means def; otherwise (0, CATTL/6].
func (a *Authority) svidTTL(ttl, def time.Duration) (time.Duration, error) {
	switch {
	case ttl == 0:
		return def, nil
	case ttl < 0 || ttl > a.cfg.maxSVIDTTL():
		return 0, fmt.Errorf("%w: ttl %s out of range (0, %s] (CATTL/6)", ErrInvalidParams, ttl, a.cfg.maxSVIDTTL())
	}
	return ttl, nil
}
