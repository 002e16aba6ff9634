package dashboard

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/httpserve"
	"github.com/tallyid/tally/internal/webcert"
)

// fakeSource is a Source the test changes by hand, as the server's records
// would change as SVIDs rotate.
type fakeSource struct {
	mu        sync.Mutex
	o         Overview
	buckets   []Bucket
	subs      map[chan struct{}]struct{}
	overviews atomic.Int64 // Overview calls
}

func newFakeSource(o Overview, buckets []Bucket) *fakeSource {
	return &fakeSource{o: o, buckets: buckets, subs: map[chan struct{}]struct{}{}}
}

func (f *fakeSource) Overview(time.Time) Overview {
	f.overviews.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.o
}

func (f *fakeSource) Buckets(since time.Time) []Bucket {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Bucket
	for _, b := range f.buckets {
		if !b.Minute.Before(since.Truncate(time.Minute)) {
			out = append(out, b)
		}
	}
	return out
}

func (f *fakeSource) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs[ch] = struct{}{}
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, ch)
	}
}

// undelivered counts the change signals no subscriber has taken yet.
func (f *fakeSource) undelivered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for ch := range f.subs {
		n += len(ch)
	}
	return n
}

// update changes a copy of the overview (an Overview once returned is not
// modified) and tells the subscribers.
func (f *fakeSource) update(change func(o *Overview, buckets *[]Bucket)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.o
	o.Slots = slices.Clone(o.Slots)
	o.Agents = slices.Clone(o.Agents)
	o.Workloads = slices.Clone(o.Workloads)
	o.AtRisk = slices.Clone(o.AtRisk)
	b := slices.Clone(f.buckets)
	change(&o, &b)
	f.o, f.buckets = o, b
	for ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// fakeAuth accepts the tokens it was given until they expire, and admin
// certificates by their SPIFFE ID (the listener verified the chain).
type fakeAuth struct {
	mu     sync.Mutex
	tokens map[string]time.Time
	admin  string
}

func (a *fakeAuth) VerifyToken(_ context.Context, token string) (time.Time, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.tokens[token]
	if !ok {
		return time.Time{}, errors.New("fake: unknown token")
	}
	return exp, nil
}

func (a *fakeAuth) VerifyAdmin(_ context.Context, chain []*x509.Certificate) error {
	for _, u := range chain[0].URIs {
		if u.String() == a.admin {
			return nil
		}
	}
	return errors.New("fake: not an admin")
}

const (
	testTD    = "example.org"
	testToken = "dashboard-token-for-tests"
	adminID   = "spiffe://example.org/admin/alice"
)

// fleet makes an overview of n workloads on agents agents, reproducibly:
// x509 and jwt slots (one prepared), workloads mid-life, one in 500 with a
// failing renewal, and one SVID at risk (the first): its renewal fails and
// it expires in 4 minutes.
func fleet(now time.Time, n, agents int) (Overview, []Bucket) {
	r := mrand.New(mrand.NewPCG(1, 2))
	hexs := func(k int) string {
		const digits = "0123456789abcdef"
		b := make([]byte, k)
		for i := range b {
			b[i] = digits[r.IntN(16)]
		}
		return string(b)
	}
	o := Overview{TrustDomain: testTD}
	o.Slots = []Slot{
		{Kind: "x509", ID: "a1" + hexs(38), Status: "old", NotBefore: now.Add(-30 * time.Hour), NotAfter: now.Add(6 * time.Hour), ActivatedAt: now.Add(-25 * time.Hour)},
		{Kind: "x509", ID: "b2" + hexs(38), Status: "active", NotBefore: now.Add(-10 * time.Hour), NotAfter: now.Add(26 * time.Hour), ActivatedAt: now.Add(-5 * time.Hour)},
		{Kind: "x509", ID: "c3" + hexs(38), Status: "prepared", NotBefore: now.Add(-1 * time.Hour), NotAfter: now.Add(35 * time.Hour)},
		{Kind: "jwt", ID: "jk" + hexs(14), Status: "active", NotBefore: now.Add(-8 * time.Hour), NotAfter: now.Add(28 * time.Hour), ActivatedAt: now.Add(-3 * time.Hour)},
	}
	active := o.Slots[1].ID
	namespaces := []string{"payments", "checkout", "search", "identity", "ledger", "billing", "web", "batch"}
	services := []string{"api", "worker", "gateway", "db-proxy", "cache", "frontend", "indexer", "scheduler"}
	for i := range agents {
		node := fmt.Sprintf("node-%03d", i)
		o.Agents = append(o.Agents, Agent{
			// Tally's k8s_psat agent ID: cluster, then the node's UID.
			ID:              "spiffe://example.org/tally/agent/k8s_psat/prod/" + hexs(8) + "-" + hexs(4) + "-" + hexs(4) + "-" + hexs(4) + "-" + hexs(12),
			Node:            node,
			AttestationType: "k8s_psat",
			LastReport:      now.Add(-time.Duration(r.IntN(50)) * time.Second),
			SVIDNotAfter:    now.Add(time.Duration(20+r.IntN(40)) * time.Minute),
			TokenNotAfter:   now.Add(time.Duration(10+r.IntN(50)) * time.Minute),
		})
	}
	for i := range n {
		a := i % agents
		ns := namespaces[i%len(namespaces)]
		svc := services[(i/len(namespaces))%len(services)]
		nb := now.Add(-time.Duration(r.IntN(1800)) * time.Second)
		w := Workload{
			SPIFFEID:    fmt.Sprintf("spiffe://example.org/ns/%s/sa/%s-%d", ns, svc, i),
			EntryID:     hexs(8) + "-" + hexs(4) + "-" + hexs(4) + "-" + hexs(4) + "-" + hexs(12),
			AgentID:     o.Agents[a].ID,
			Node:        o.Agents[a].Node,
			Namespace:   ns,
			Pod:         fmt.Sprintf("%s-%s-%s", svc, hexs(9), hexs(5)),
			Serial:      hexs(32),
			SignerID:    active,
			NotBefore:   nb,
			NotAfter:    nb.Add(time.Hour),
			Renewals:    r.IntN(40),
			Subscribers: 1 + r.IntN(2),
		}
		if i%500 == 250 {
			w.LastError = "rpc error: code = Unavailable desc = connection refused"
		}
		o.Agents[a].Workloads++
		o.Workloads = append(o.Workloads, w)
	}
	risky := &o.Workloads[0]
	risky.NotBefore, risky.NotAfter = now.Add(-56*time.Minute), now.Add(4*time.Minute)
	risky.LastError = "rpc error: code = Unavailable desc = server unreachable"
	risky.AtRisk = []string{"expires in 4m and its renewal fails"}
	o.AtRisk = []Risk{{Kind: "svid", Subject: risky.SPIFFEID, Reason: risky.AtRisk[0], Since: now.Add(-26 * time.Minute)}}

	var buckets []Bucket
	start := now.Truncate(time.Minute).Add(-59 * time.Minute)
	for m := range 60 {
		b := Bucket{Minute: start.Add(time.Duration(m) * time.Minute), First: r.IntN(3), Renewals: n/60 + r.IntN(n/120+1)}
		if m > 32 && m < 38 { // an outage
			b.Failures = 1 + r.IntN(3)
		}
		buckets = append(buckets, b)
	}
	return o, buckets
}

// testServer is the handler behind the web listener, as tally-server serves
// it: a local serving CA's certificate, client certificates asked for and
// verified against a test trust domain CA.
type testServer struct {
	URL     string // https://localhost:port
	Handler *Handler
	Source  *fakeSource
	Auth    *fakeAuth
	Web     *webcert.Local
	// StopRun stops the handler's Run, not the server.
	StopRun  func()
	roots    *x509.CertPool
	clientCA *x509.Certificate
	caKey    *ecdsa.PrivateKey
}

func startServer(t testing.TB, src *fakeSource, clk clock.WithTicker, tokenExpiry time.Time, tweak func(*Config)) *testServer {
	t.Helper()
	web, err := webcert.NewLocal(webcert.LocalConfig{
		Dir: t.TempDir(), DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	require.NoError(t, err)
	clientCA, caKey := testCA(t)
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(clientCA)

	auth := &fakeAuth{tokens: map[string]time.Time{testToken: tokenExpiry}, admin: adminID}
	cfg := Config{Source: src, Auth: auth, Clock: clk}
	if tweak != nil {
		tweak(&cfg)
	}
	h, err := New(cfg)
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle(Prefix, h)
	srv := &http.Server{Handler: mux, TLSConfig: webcert.TLSConfig(web, func() *x509.CertPool { return clientCAs }),
		ErrorLog: log.New(io.Discard, "", 0)} // handshakes the tests refuse on purpose
	runCtx, stopRun := context.WithCancel(context.Background())
	serveCtx, stopServe := context.WithCancel(context.Background())
	served, ran := make(chan error, 1), make(chan error, 1)
	go func() { ran <- h.Run(runCtx) }()
	go func() { served <- httpserve.Serve(serveCtx, srv, lis, true) }()
	var once sync.Once
	s := &testServer{Handler: h, Source: src, Auth: auth, Web: web, clientCA: clientCA, caKey: caKey}
	s.StopRun = func() {
		once.Do(func() {
			stopRun()
			require.NoError(t, <-ran)
		})
	}
	t.Cleanup(func() {
		s.StopRun()
		stopServe()
		require.NoError(t, <-served)
	})
	s.roots = x509.NewCertPool()
	s.roots.AddCert(web.CA())
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	s.URL = "https://localhost:" + port
	return s
}

// client trusts the local serving CA (and no other), and presents certs.
func (s *testServer) client(certs ...tls.Certificate) *http.Client {
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.roots, Certificates: certs}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// svid is an X509-SVID for id from the test trust domain CA.
func (s *testServer) svid(t testing.TB, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	u, err := url.Parse(id)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.clientCA, key.Public(), s.caKey)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func testCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "example.org test CA"},
		URIs:      []*url.URL{{Scheme: "spiffe", Host: testTD}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return ca, key
}
