package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca/store"
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// memJournal is an in-memory JournalStore. failSave makes the next saves fail.
type memJournal struct {
	mu       sync.Mutex
	journal  []byte
	bundle   []byte
	saves    int
	failSave error
}

func (m *memJournal) LoadJournal(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.journal == nil {
		return nil, fmt.Errorf("journal: %w", store.ErrNotFound)
	}
	return append([]byte(nil), m.journal...), nil
}

func (m *memJournal) SaveJournal(_ context.Context, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failSave != nil {
		return m.failSave
	}
	m.journal = append([]byte(nil), b...)
	m.saves++
	return nil
}

func (m *memJournal) LoadBundle(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bundle == nil {
		return nil, fmt.Errorf("bundle: %w", store.ErrNotFound)
	}
	return append([]byte(nil), m.bundle...), nil
}

func (m *memJournal) SaveBundle(_ context.Context, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failSave != nil {
		return m.failSave
	}
	m.bundle = append([]byte(nil), b...)
	return nil
}

func (m *memJournal) storedBundle() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.bundle...)
}

func (m *memJournal) setFail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failSave = err
}

// testEnv is an authority with a fake clock, an in-memory journal and a temp
// key dir.
type testEnv struct {
	cfg     Config
	clock   *testingclock.FakeClock
	journal *memJournal
	a       *Authority
}

// newTestEnv starts the fake clock at the current second, since go-spiffe's
// JWT validation uses the real time.
func newTestEnv(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	return newTestEnvAt(t, time.Now().Truncate(time.Second), mod)
}

func newTestEnvAt(t testing.TB, start time.Time, mod func(*Config)) *testEnv {
	t.Helper()
	clk := testingclock.NewFakeClock(start)
	j := &memJournal{}
	cfg := Config{
		TrustDomain: testTD,
		KeyDir:      filepath.Join(t.TempDir(), "keys"),
		Journal:     j,
		Clock:       clk,
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(context.Background(), cfg)
	require.NoError(t, err)
	return &testEnv{cfg: cfg, clock: clk, journal: j, a: a}
}

// restart makes a new Authority on the same journal, key dir and clock.
func (e *testEnv) restart(t testing.TB) {
	t.Helper()
	a, err := New(context.Background(), e.cfg)
	require.NoError(t, err)
	e.a = a
}

func (e *testEnv) tick(t testing.TB) {
	t.Helper()
	_, err := e.a.tick(context.Background())
	require.NoError(t, err)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func mustID(t testing.TB, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	require.NoError(t, err)
	return id
}

// makeCSR signs a CSR with key for the given template.
func makeCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	return der
}

func uris(t testing.TB, ss ...string) []*url.URL {
	t.Helper()
	out := make([]*url.URL, len(ss))
	for i, s := range ss {
		u, err := url.Parse(s)
		require.NoError(t, err)
		out[i] = u
	}
	return out
}

// testUpstream is an upstream CA made for a test: a root, optionally with an
// intermediate that holds the key given to the authority.
type testUpstream struct {
	root     *x509.Certificate
	rootKey  *ecdsa.PrivateKey
	certs    []*x509.Certificate // as written to the cert file: signing CA first, root last
	certFile string
	keyFile  string
}

func newTestUpstream(t testing.TB, dir string, notBefore, notAfter time.Time, withIntermediate bool) *testUpstream {
	t.Helper()
	var interNotAfter time.Time
	if withIntermediate {
		interNotAfter = notAfter
	}
	return newTestUpstreamChain(t, dir, notBefore, notAfter, interNotAfter)
}

// newTestUpstreamChain writes an upstream CA whose root and intermediate
// expire at different times; a zero interNotAfter means no intermediate (the
// root signs).
func newTestUpstreamChain(t testing.TB, dir string, notBefore, rootNotAfter, interNotAfter time.Time) *testUpstream {
	t.Helper()
	rootKey := newKey(t)
	rootTmpl := &x509.Certificate{
		SerialNumber:          testSerial(t),
		Subject:               pkix.Name{Organization: []string{"Upstream"}, CommonName: "upstream root " + testSerial(t).String()},
		NotBefore:             notBefore,
		NotAfter:              rootNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	root := createTestCert(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	u := &testUpstream{root: root, rootKey: rootKey, certs: []*x509.Certificate{root}}
	signKey := rootKey
	if !interNotAfter.IsZero() {
		signKey = newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber:          testSerial(t),
			Subject:               pkix.Name{Organization: []string{"Upstream"}, CommonName: "upstream intermediate"},
			NotBefore:             notBefore,
			NotAfter:              interNotAfter,
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
		u.certs = []*x509.Certificate{createTestCert(t, tmpl, root, signKey.Public(), rootKey), root}
	}
	var certPEM []byte
	for _, c := range u.certs {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(signKey)
	require.NoError(t, err)
	u.certFile = filepath.Join(dir, "upstream.crt")
	u.keyFile = filepath.Join(dir, "upstream.key")
	require.NoError(t, os.WriteFile(u.certFile, certPEM, 0o644))
	require.NoError(t, os.WriteFile(u.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	return u
}

// reissueRoot returns the upstream root again, same subject and key, valid
// until notAfter: what an upstream CA hands out when it renews its root.
func (u *testUpstream) reissueRoot(t testing.TB, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          testSerial(t),
		Subject:               u.root.Subject,
		NotBefore:             u.root.NotBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              u.root.KeyUsage,
	}
	return createTestCert(t, tmpl, tmpl, u.rootKey.Public(), u.rootKey)
}

func createTestCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

func testSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	require.NoError(t, err)
	return n
}

var errInjected = errors.New("injected failure")
