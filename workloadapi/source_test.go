package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/workloadapi"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// testCA signs X509-SVIDs and JWT-SVIDs for td.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	jwtKey *ecdsa.PrivateKey
	kid    string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"test"}},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key, jwtKey: jwtKey, kid: "jwt-key-1"}
}

// bundle is the trust bundle with the CA's X.509 and JWT authorities.
func (ca *testCA) bundle() *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{ca.cert})
	b.SetJWTAuthorities(map[string]crypto.PublicKey{ca.kid: ca.jwtKey.Public()})
	return b
}

var serial = struct {
	sync.Mutex
	n int64
}{n: 100}

// x509SVID mints a leaf for id with a fresh key.
func (ca *testCA) x509SVID(t testing.TB, id spiffeid.ID, hint string) workloadapi.X509SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial.Lock()
	serial.n++
	sn := serial.n
	serial.Unlock()
	notAfter := time.Now().Add(time.Hour).Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(sn),
		URIs:         []*url.URL{id.URL()},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return workloadapi.X509SVID{ID: id, CertChain: der, Key: pkcs8, Hint: hint, ExpiresAt: notAfter}
}

// jwtSVID signs a JWT-SVID for id valid for ttl (negative: already expired).
func (ca *testCA) jwtSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: ca.jwtKey, KeyID: ca.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	now := time.Now()
	return jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: audience,
		IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}).Claims(map[string]any{"tally_test": "yes"}).Serialize()
}

// entry is a registration: the SVID goes to callers with all of selectors.
type entry struct {
	selectors []attest.Selector
	svid      workloadapi.X509SVID
}

func (e entry) matches(sels []attest.Selector) bool {
	for _, s := range e.selectors {
		if !slices.Contains(sels, s) {
			return false
		}
	}
	return true
}

// testSource is an in-memory workloadapi.Source: the agent cache's contract
// without the agent.
type testSource struct {
	ca *testCA

	mu           sync.Mutex
	bundle       *spiffebundle.Bundle
	entries      []entry
	subs         map[*testSub]struct{}
	bundleSubs   map[chan *spiffebundle.Bundle]struct{}
	subscribeErr error // SubscribeX509 and FetchJWTSVIDs fail with it
}

func newTestSource(ca *testCA, entries ...entry) *testSource {
	return &testSource{
		ca:         ca,
		bundle:     ca.bundle(),
		entries:    entries,
		subs:       make(map[*testSub]struct{}),
		bundleSubs: make(map[chan *spiffebundle.Bundle]struct{}),
	}
}

// setEntries replaces the entries and publishes to every subscriber.
func (s *testSource) setEntries(entries ...entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = entries
	for sub := range s.subs {
		sub.offer(s.updateLocked(sub.sels))
	}
}

// setBundle replaces the bundle and publishes to every subscriber.
func (s *testSource) setBundle(b *spiffebundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle = b
	for sub := range s.subs {
		sub.offer(s.updateLocked(sub.sels))
	}
	for ch := range s.bundleSubs {
		offer(ch, b)
	}
}

// open is the number of open X.509 and bundle subscriptions.
func (s *testSource) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs) + len(s.bundleSubs)
}

func (s *testSource) updateLocked(sels []attest.Selector) workloadapi.X509Update {
	u := workloadapi.X509Update{Bundle: s.bundle}
	for _, e := range s.entries {
		if e.matches(sels) {
			u.SVIDs = append(u.SVIDs, e.svid)
		}
	}
	return u
}

func (s *testSource) SubscribeX509(_ context.Context, sels []attest.Selector) (workloadapi.Subscription, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subscribeErr != nil {
		return nil, s.subscribeErr
	}
	sub := &testSub{src: s, sels: sels, ch: make(chan workloadapi.X509Update, 1)}
	s.subs[sub] = struct{}{}
	sub.offer(s.updateLocked(sels))
	return sub, nil
}

func (s *testSource) FetchJWTSVIDs(_ context.Context, sels []attest.Selector, id spiffeid.ID, audience []string) ([]workloadapi.JWTSVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subscribeErr != nil {
		return nil, s.subscribeErr
	}
	var out []workloadapi.JWTSVID
	for _, e := range s.entries {
		if !e.matches(sels) || (!id.IsZero() && e.svid.ID != id) {
			continue
		}
		token, err := s.ca.jwtSVID(e.svid.ID, audience, time.Hour)
		if err != nil {
			return nil, err
		}
		out = append(out, workloadapi.JWTSVID{ID: e.svid.ID, Token: token, Hint: e.svid.Hint, ExpiresAt: time.Now().Add(time.Hour)})
	}
	return out, nil
}

func (s *testSource) SubscribeBundle() (<-chan *spiffebundle.Bundle, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan *spiffebundle.Bundle, 1)
	s.bundleSubs[ch] = struct{}{}
	ch <- s.bundle
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.bundleSubs, ch)
	}
}

func (s *testSource) Bundle() *spiffebundle.Bundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle
}

type testSub struct {
	src  *testSource
	sels []attest.Selector
	ch   chan workloadapi.X509Update
}

// offer replaces the pending update, if any: latest wins. Called with the
// source's lock held, so there is one sender at a time.
func (s *testSub) offer(u workloadapi.X509Update) { offer(s.ch, u) }

func offer[T any](ch chan T, v T) {
	select {
	case <-ch:
	default:
	}
	ch <- v
}

func (s *testSub) Updates() <-chan workloadapi.X509Update { return s.ch }

func (s *testSub) Close() {
	s.src.mu.Lock()
	defer s.src.mu.Unlock()
	delete(s.src.subs, s)
}
