package bench

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/delegation"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// BenchmarkTokenExchange measures RFC 8693 exchanges per second and their
// latency with 50 concurrent clients, over kept-alive mTLS connections to the
// server's endpoint and through the agent socket, beside the raw floor of the
// same run: one subject-token verification (RS256 or ES256) and one ES256
// signature per exchange, in a plain loop on every core. Clients and server
// share this machine's cores.
func BenchmarkTokenExchange(b *testing.B) {
	if b.N > 1 {
		b.Skip("one-shot benchmark: run with -benchtime 1x")
	}
	const clients = 50
	d := benchDuration()
	iss := newBenchIssuer(b)
	cfg := harness.ConfigFile(b, fmt.Sprintf(`
exchange:
  issuers:
    - url: %s
      audiences: [bench-app]
  rules:
    - name: bench
      actors: [spiffe://example.org/bench]
      audiences: [spiffe://example.org/todos]
      scopes: [todos.read]
      claims: [email, roles]
`, iss.srv.URL))
	s := harness.StartServer(b, "--config", cfg, "--log-level", "info")
	ctx := context.Background()

	// The caller's X509-SVID, minted through the Node API as an agent would.
	agent, err := s.AttestJoinToken(b, s.NewToken(b, ""))
	require.NoError(b, err)
	created, err := s.Admin(b).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{{
		SpiffeId: "spiffe://example.org/bench", ParentId: agent.ID.String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:4242"}},
	}}})
	require.NoError(b, err)
	key := harness.NewKey(b)
	resp, err := agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{
		EntryId: created.GetEntries()[0].GetId(), Csr: harness.CSR(b, key, []string{"spiffe://example.org/bench"}, nil)}}})
	require.NoError(b, err)
	svid := harness.SVID(b, resp.GetResults()[0].GetCertChain(), key)
	bundle := s.Bundle(b)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     tlsconfig.MTLSClientConfig(staticSVID{svid}, bundle, tlsconfig.AuthorizeID(s.ServerID())),
		MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients,
	}}
	endpoint := "https://" + s.HTTPAddr + "/oauth2/token"
	overHTTPS := func(subject string) func() (int, error) {
		body := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "subject_token": {subject},
			"subject_token_type": {"urn:ietf:params:oauth:token-type:id_token"}, "audience": {"spiffe://example.org/todos"}}.Encode()
		return func() (int, error) {
			resp, err := client.Post(endpoint, "application/x-www-form-urlencoded", strings.NewReader(body))
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return 0, fmt.Errorf("exchange: %d %s", resp.StatusCode, raw)
			}
			return 1, nil
		}
	}

	// The same through the agent socket: the agent attests each caller and
	// forwards over its Node API connection.
	a := harness.StartAgent(b, s, "", "--log-level", "info", "--jwt-mint-rate", "1000000", "--jwt-mint-burst", "1000000")
	_, err = s.Admin(b).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{{
		SpiffeId: "spiffe://example.org/bench", ParentId: a.ID(b).String(),
		Selectors: []*tallyv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", os.Getuid())}},
	}}})
	require.NoError(b, err)
	dc := make([]*delegation.Client, clients)
	for i := range dc {
		dc[i], err = delegation.NewClient(a.Addr())
		require.NoError(b, err)
		defer dc[i].Close()
	}
	rs := iss.token(b, jose.RS256)
	es := iss.token(b, jose.ES256)
	require.Eventually(b, func() bool { _, err = dc[0].ForIDToken(ctx, rs, "spiffe://example.org/todos"); return err == nil },
		30*time.Second, 100*time.Millisecond, "the agent has synced: %v", err)
	var next sync.Mutex
	n := 0
	viaAgent := func(subject string) func() (int, error) {
		return func() (int, error) {
			next.Lock()
			c := dc[n%clients]
			n++
			next.Unlock()
			_, err := c.ForIDToken(ctx, subject, "spiffe://example.org/todos")
			return 1, err
		}
	}

	cores := runtime.GOMAXPROCS(0)
	var rows []string
	for _, tc := range []struct {
		name  string
		alg   jose.SignatureAlgorithm
		tok   string
		op    func(string) func() (int, error)
		agent bool
	}{
		{"HTTPS mTLS, RS256 subject", jose.RS256, rs, overHTTPS, false},
		{"HTTPS mTLS, ES256 subject", jose.ES256, es, overHTTPS, false},
		{"agent socket, RS256 subject", jose.RS256, rs, viaAgent, true},
	} {
		floor1 := rate(b, d, 1, iss.floor(b, tc.alg, tc.tok)) // the floor in one plain loop
		self := os.Getpid()
		c0 := harness.CPUOf(b, self)
		start := time.Now()
		floor := rate(b, d, cores, iss.floor(b, tc.alg, tc.tok)) // and on every core
		floorCPU := time.Duration(float64(harness.CPUOf(b, self)-c0) / (floor * time.Since(start).Seconds()))

		// The Tally side's CPU: the server's, and the agent's on that path.
		tallyCPU := func() time.Duration {
			c := harness.CPUOf(b, s.PID())
			if tc.agent {
				c += harness.CPUOf(b, a.PID())
			}
			return c
		}
		t0 := tallyCPU()
		start = time.Now()
		got, p50, p99 := rateLatency(b, d, clients, tc.op(tc.tok))
		perExchange := time.Duration(float64(tallyCPU()-t0) / (got * time.Since(start).Seconds()))
		rows = append(rows, fmt.Sprintf("%s\t%d\t%.0f\t%.0f\t%.2f\t%.0f\t%.2f\t%s\t%s\t%s\t%s\t%.2f", tc.name, clients, got,
			floor1, got/floor1, floor, got/floor,
			p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond),
			perExchange.Round(time.Microsecond), floorCPU.Round(time.Microsecond), float64(floorCPU)/float64(perExchange)))
		name := strings.NewReplacer(" ", "_", ",", "").Replace(tc.name)
		b.ReportMetric(got/floor1, name+"_vs_floor_1loop")
		b.ReportMetric(got/floor, name+"_vs_floor_allcores")
		b.ReportMetric(float64(floorCPU)/float64(perExchange), name+"_cpu_vs_floor")
	}
	table(b, fmt.Sprintf("Token exchange (RFC 8693, a JWT-SVID carrying the user) vs the raw floor (subject verify + ES256 sign): in one plain loop, "+
		"and in a loop on each of the %d cores; the 50 clients share the cores; CPU: Tally's CPU time per exchange (server, plus agent on the agent path) and the floor's per operation", cores),
		"path\tclients\texchanges/s\tfloor 1 loop/s\tratio\tfloor all cores/s\tratio\tp50\tp99\tTally CPU/exchange\tfloor CPU/op\tCPU ratio", rows)
}

// rateLatency is rate that also returns the median and 99th percentile of
// one op's latency.
func rateLatency(t testing.TB, d time.Duration, workers int, op func() (int, error)) (float64, time.Duration, time.Duration) {
	var mu sync.Mutex
	var lat []time.Duration
	r := rate(t, d, workers, func() (int, error) {
		start := time.Now()
		n, err := op()
		el := time.Since(start)
		mu.Lock()
		lat = append(lat, el)
		mu.Unlock()
		return n, err
	})
	slices.Sort(lat)
	return r, lat[len(lat)/2], lat[len(lat)*99/100]
}

// benchIssuer is an OIDC issuer (discovery and JWKS on loopback) with an
// RSA and an EC key, so subject tokens of both algorithms can be measured.
type benchIssuer struct {
	srv *httptest.Server
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

func newBenchIssuer(t testing.TB) *benchIssuer {
	is := &benchIssuer{}
	is.rsa, _ = rsa.GenerateKey(rand.Reader, 2048)
	is.ec, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"}})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: is.rsa.Public(), KeyID: "rsa", Algorithm: "RS256", Use: "sig"},
			{Key: is.ec.Public(), KeyID: "ec", Algorithm: "ES256", Use: "sig"}}})
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

func (is *benchIssuer) key(alg jose.SignatureAlgorithm) (crypto.Signer, string) {
	if alg == jose.RS256 {
		return is.rsa, "rsa"
	}
	return is.ec, "ec"
}

// token is Bob's ID token, valid for the whole benchmark.
func (is *benchIssuer) token(t testing.TB, alg jose.SignatureAlgorithm) string {
	key, kid := is.key(alg)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	require.NoError(t, err)
	now := time.Now()
	tok, err := jwt.Signed(s).Claims(map[string]any{"iss": is.srv.URL, "sub": "bob", "aud": "bench-app", "iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "email": "bob@example.com", "roles": []string{"user"}}).Serialize()
	require.NoError(t, err)
	return tok
}

// floor is one exchange's raw crypto: verify the subject token with the
// issuer's key, sign an ES256 token of the issued size.
func (is *benchIssuer) floor(t testing.TB, alg jose.SignatureAlgorithm, subject string) func() (int, error) {
	key, _ := is.key(alg)
	sign := jwtFloor(t)
	return func() (int, error) {
		tok, err := jwt.ParseSigned(subject, []jose.SignatureAlgorithm{alg})
		if err != nil {
			return 0, err
		}
		var c map[string]any
		if err := tok.Claims(key.Public(), &c); err != nil {
			return 0, err
		}
		return sign()
	}
}

// staticSVID is an x509svid.Source of one SVID.
type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
