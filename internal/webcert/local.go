package webcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/renew"
)

// The local serving CA's files in LocalConfig.Dir, and its name.
const (
	CAFileName      = "ca.pem"
	caKeyFileName   = "ca-key.pem"
	certFileName    = "serving.pem"
	keyFileName     = "serving-key.pem"
	CACommonName    = "Tally local serving CA"
	caLifetime      = 10 * 365 * 24 * time.Hour
	backdate        = 5 * time.Minute
	retryFailedSign = time.Minute
)

// DefaultServingTTL is the lifetime of a serving certificate signed by the
// local CA.
const DefaultServingTTL = 90 * 24 * time.Hour

// LocalConfig configures NewLocal.
type LocalConfig struct {
	// Dir keeps the CA and the serving certificate (created 0700; the keys
	// 0600). Required.
	Dir string
	// DNSNames and IPAddresses are the names the serving certificate is
	// for; at least one is required.
	DNSNames    []string
	IPAddresses []net.IP
	// TTL is the serving certificate's lifetime (default DefaultServingTTL).
	TTL time.Duration
	// Clock (default: the real one) decides renewals.
	Clock clock.PassiveClock
	// Logger (default: discard) receives the CA's creation and renewals.
	Logger *slog.Logger
}

// Local is a serving certificate signed by a local serving CA: an ECDSA
// P-256 CA named CACommonName, valid 10 years and name-constrained to the
// configured DNS names (and their subdomains) and IP addresses, so that a
// browser that trusts it takes it for nothing else, even if its key (0600 in
// Dir) were stolen.
//
// It is created once and kept in Dir; later runs reuse it, so that a user
// trusts it once. The CA is made anew only when the configured names go
// beyond its constraints or it nears its expiry (logged: the new CAFile must
// then be trusted again). The serving certificate is renewed half way
// through its life (internal/renew), at the handshake that finds it due.
type Local struct {
	cfg LocalConfig

	mu       sync.Mutex
	ca       *x509.Certificate
	caKey    *ecdsa.PrivateKey
	cert     *tls.Certificate
	renewAt  time.Time
	retryAt  time.Time // after a failed renewal
	renewErr error
}

// NewLocal loads the CA and serving certificate kept in cfg.Dir, creating
// or renewing what is missing, does not cover the names, or is due.
func NewLocal(cfg LocalConfig) (*Local, error) {
	if cfg.Dir == "" {
		return nil, errors.New("webcert: local CA: a directory is required")
	}
	if len(cfg.DNSNames) == 0 && len(cfg.IPAddresses) == 0 {
		return nil, errors.New("webcert: local CA: at least one DNS name or IP address is required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultServingTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("webcert: %w", err)
	}
	l := &Local{cfg: cfg}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.loadOrCreateCA(); err != nil {
		return nil, err
	}
	if err := l.loadOrIssue(); err != nil {
		return nil, err
	}
	return l, nil
}

// CAFile is the path of the local CA's certificate (PEM), the one a user
// trusts.
func (l *Local) CAFile() string { return filepath.Join(l.cfg.Dir, CAFileName) }

// CA returns the local CA's certificate.
func (l *Local) CA() *x509.Certificate {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ca
}

// GetCertificate returns the serving certificate, renewing it first when it
// is due. A renewal that fails is logged and tried again a minute later;
// until then, and while the current certificate is still valid, that one
// is returned.
func (l *Local) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Clock.Now()
	if now.Before(l.renewAt) || now.Before(l.retryAt) {
		return l.cert, nil
	}
	if err := l.renewLocked(now); err != nil {
		l.retryAt = now.Add(retryFailedSign)
		l.cfg.Logger.Error("renew the web serving certificate", logkey.Error, err, logkey.RetryIn, retryFailedSign)
		if now.After(l.cert.Leaf.NotAfter) {
			return nil, err
		}
	}
	return l.cert, nil
}

func (l *Local) renewLocked(now time.Time) error {
	if l.ca.NotAfter.Sub(now) < 2*l.cfg.TTL {
		if err := l.createCA(now); err != nil {
			return err
		}
	}
	return l.issue(now)
}

func (l *Local) loadOrCreateCA() error {
	now := l.cfg.Clock.Now()
	ca, key, err := readPair(filepath.Join(l.cfg.Dir, CAFileName), filepath.Join(l.cfg.Dir, caKeyFileName))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return l.createCA(now)
	case err != nil:
		return err
	case ca.NotAfter.Sub(now) < 2*l.cfg.TTL:
		l.cfg.Logger.Warn("the local serving CA nears its expiry: making a new one, which must be trusted again",
			logkey.Path, l.CAFile(), logkey.NotAfter, ca.NotAfter)
		return l.createCA(now)
	case !permits(ca, l.cfg.DNSNames, l.cfg.IPAddresses):
		l.cfg.Logger.Warn("the web names changed beyond the local serving CA's constraints: making a new CA, which must be trusted again",
			logkey.Path, l.CAFile())
		return l.createCA(now)
	}
	l.ca, l.caKey = ca, key
	return nil
}

// loadOrIssue keeps the stored serving certificate if the CA signed it, it
// covers the names and it is not due for renewal; otherwise it issues one.
func (l *Local) loadOrIssue() error {
	now := l.cfg.Clock.Now()
	leaf, key, err := readPair(filepath.Join(l.cfg.Dir, certFileName), filepath.Join(l.cfg.Dir, keyFileName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		l.cfg.Logger.Warn("the stored web serving certificate is unreadable: issuing another", logkey.Error, err)
	}
	if err == nil && leaf.CheckSignatureFrom(l.ca) == nil && covers(leaf, l.cfg.DNSNames, l.cfg.IPAddresses) {
		renewAt := renew.At(now, leaf.NotBefore, leaf.NotAfter)
		if now.Before(renewAt) {
			l.cert = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
			l.renewAt = renewAt
			return nil
		}
	}
	return l.issue(now)
}

func (l *Local) createCA(now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial(),
		Subject:                     pkix.Name{CommonName: CACommonName, Organization: []string{"Tally"}},
		NotBefore:                   now.Add(-backdate),
		NotAfter:                    now.Add(caLifetime),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         slices.Clone(l.cfg.DNSNames),
	}
	for _, ip := range l.cfg.IPAddresses {
		tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, hostNet(ip))
	}
	// A name type without a permitted subtree would be unconstrained.
	if len(tmpl.PermittedDNSDomains) == 0 {
		tmpl.PermittedDNSDomains = []string{"invalid"} // RFC 2606: no such name
	}
	if len(tmpl.PermittedIPRanges) == 0 {
		tmpl.ExcludedIPRanges = []*net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("webcert: create the local serving CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	if err := writePair(filepath.Join(l.cfg.Dir, CAFileName), filepath.Join(l.cfg.Dir, caKeyFileName), der, key); err != nil {
		return err
	}
	l.ca, l.caKey = ca, key
	l.cfg.Logger.Info("created a local serving CA for the web listener; trust its certificate to open the dashboard",
		logkey.Path, l.CAFile(), logkey.NotAfter, ca.NotAfter)
	return nil
}

func (l *Local) issue(now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	notAfter := now.Add(l.cfg.TTL)
	if notAfter.After(l.ca.NotAfter) {
		notAfter = l.ca.NotAfter
	}
	cn := ""
	if len(l.cfg.DNSNames) > 0 {
		cn = l.cfg.DNSNames[0]
	} else {
		cn = l.cfg.IPAddresses[0].String()
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     slices.Clone(l.cfg.DNSNames),
		IPAddresses:  slices.Clone(l.cfg.IPAddresses),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, l.ca, key.Public(), l.caKey)
	if err != nil {
		return fmt.Errorf("webcert: sign the web serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	if err := writePair(filepath.Join(l.cfg.Dir, certFileName), filepath.Join(l.cfg.Dir, keyFileName), der, key); err != nil {
		return err
	}
	l.cert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	l.renewAt = renew.At(now, leaf.NotBefore, leaf.NotAfter)
	l.retryAt = time.Time{}
	l.cfg.Logger.Info("issued the web serving certificate", logkey.Path, filepath.Join(l.cfg.Dir, certFileName),
		logkey.NotAfter, leaf.NotAfter)
	return nil
}

// permits reports whether the CA's name constraints allow every name.
func permits(ca *x509.Certificate, dnsNames []string, ips []net.IP) bool {
	for _, name := range dnsNames {
		if !slices.Contains(ca.PermittedDNSDomains, name) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(ca.PermittedIPRanges, func(n *net.IPNet) bool { return n.String() == hostNet(ip).String() }) {
			return false
		}
	}
	return true
}

// covers reports whether leaf names exactly dnsNames and ips.
func covers(leaf *x509.Certificate, dnsNames []string, ips []net.IP) bool {
	if !slices.Equal(leaf.DNSNames, dnsNames) || len(leaf.IPAddresses) != len(ips) {
		return false
	}
	for i, ip := range ips {
		if !leaf.IPAddresses[i].Equal(ip) {
			return false
		}
	}
	return true
}

func hostNet(ip net.IP) *net.IPNet {
	if v4 := ip.To4(); v4 != nil {
		return &net.IPNet{IP: v4, Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: ip.To16(), Mask: net.CIDRMask(128, 128)}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n.Add(n, big.NewInt(1))
}

func readPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("webcert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("webcert: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("webcert: %s: %w", certFile, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("webcert: %s: not an ECDSA key", keyFile)
	}
	return pair.Leaf, key, nil
}

// writePair writes the key (0600) and then the certificate, each through a
// temporary file renamed into place, so that a crash leaves either the old
// pair or a new key beside the old certificate, which readPair refuses and
// the next start replaces.
func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	if err := writeFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err := errors.Join(err, tmp.Close()); err != nil {
		return fmt.Errorf("webcert: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("webcert: %w", err)
	}
	return nil
}
