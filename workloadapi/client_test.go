package workloadapi_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/tallyid/tally/attest"
)

// These tests use go-spiffe's Workload API client, as workloads do.

func TestGoSpiffeFetchX509SVIDs(t *testing.T) {
	ca := newTestCA(t)
	entries := appEntries(t, ca)
	e := startServer(t, newTestSource(ca, entries...))
	ctx := testContext(t)

	svids, err := spiffewl.FetchX509SVIDs(ctx, spiffewl.WithAddr(e.addr))
	require.NoError(t, err)
	// Both identities of the test process, in order, not the one for sleep.
	require.Len(t, svids, 2)
	for i, want := range entries[:2] {
		got := svids[i]
		assert.Equal(t, want.svid.ID, got.ID)
		assert.Equal(t, want.svid.Hint, got.Hint)
		assert.Equal(t, want.svid.CertChain, got.Certificates[0].Raw)
		key, err := x509.MarshalPKCS8PrivateKey(got.PrivateKey)
		require.NoError(t, err)
		assert.Equal(t, want.svid.Key, key)
	}

	svid, err := spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr(e.addr))
	require.NoError(t, err)
	assert.Equal(t, appID, svid.ID, "the default SVID is the first")

	bundles, err := spiffewl.FetchX509Bundles(ctx, spiffewl.WithAddr(e.addr))
	require.NoError(t, err)
	b, err := bundles.GetX509BundleForTrustDomain(td)
	require.NoError(t, err)
	assert.Equal(t, []*x509.Certificate{ca.cert}, b.X509Authorities())

	// The SVID verifies against the bundle the workload received.
	_, _, err = x509svid.Verify(svid.Certificates, bundles)
	require.NoError(t, err)
	// Each fetch got both SVIDs (go-spiffe's FetchX509SVID keeps the first).
	// (counted after Send returns, which may be after the client has read it).
	require.Eventually(t, func() bool {
		return e.metric(t, "tally_agent_svids_served_total", "type", "x509") == 4
	}, waitFor, time.Millisecond)
	assert.Equal(t, float64(3), e.metric(t, "tally_agent_attestations_total", "result", "ok"))
}

func TestGoSpiffeSources(t *testing.T) {
	ca := newTestCA(t)
	e := startServer(t, newTestSource(ca, appEntries(t, ca)...))
	ctx := testContext(t)
	client := spiffewl.WithClientOptions(spiffewl.WithAddr(e.addr))

	t.Run("X509Source", func(t *testing.T) {
		src, err := spiffewl.NewX509Source(ctx, client)
		require.NoError(t, err)
		defer src.Close()
		svid, err := src.GetX509SVID()
		require.NoError(t, err)
		assert.Equal(t, appID, svid.ID)
		b, err := src.GetX509BundleForTrustDomain(td)
		require.NoError(t, err)
		assert.True(t, b.HasX509Authority(ca.cert))
	})
	t.Run("JWTSource", func(t *testing.T) {
		src, err := spiffewl.NewJWTSource(ctx, client)
		require.NoError(t, err)
		defer src.Close()
		svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		require.NoError(t, err)
		assert.Equal(t, appID, svid.ID)
		assert.Equal(t, []string{"db"}, svid.Audience)
		// The token verifies against the JWT bundle the source watches.
		_, err = jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"db"})
		require.NoError(t, err)

		svids, err := src.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "db", Subject: appExtID})
		require.NoError(t, err)
		require.Len(t, svids, 1)
		assert.Equal(t, appExtID, svids[0].ID)
	})
	t.Run("BundleSource", func(t *testing.T) {
		src, err := spiffewl.NewBundleSource(ctx, client)
		require.NoError(t, err)
		defer src.Close()
		xb, err := src.GetX509BundleForTrustDomain(td)
		require.NoError(t, err)
		assert.True(t, xb.HasX509Authority(ca.cert))
		jb, err := src.GetJWTBundleForTrustDomain(td)
		require.NoError(t, err)
		key, ok := jb.FindJWTAuthority(ca.kid)
		require.True(t, ok)
		assert.True(t, ca.jwtKey.PublicKey.Equal(key))
	})
}

type x509Watcher struct {
	updates chan *spiffewl.X509Context
}

func (w x509Watcher) OnX509ContextUpdate(c *spiffewl.X509Context) { w.updates <- c }
func (w x509Watcher) OnX509ContextWatchError(error)               {}

func TestGoSpiffeWatchX509ContextRotation(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	e := startServer(t, src)
	ctx := testContext(t)

	client, err := spiffewl.New(ctx, spiffewl.WithAddr(e.addr))
	require.NoError(t, err)
	defer client.Close()
	w := x509Watcher{updates: make(chan *spiffewl.X509Context, 10)}
	go client.WatchX509Context(ctx, w)

	first := <-w.updates
	require.Len(t, first.SVIDs, 2)

	// The agent rotates the app's SVID and adds a trust anchor: the open
	// stream receives the new full state.
	rotated := ca.x509SVID(t, appID, "internal")
	next := newTestCA(t)
	b := ca.bundle()
	b.AddX509Authority(next.cert)
	src.setBundle(b)
	src.setEntries(entry{selectors: []attest.Selector{selfUID}, svid: rotated})

	var got *spiffewl.X509Context
	for got == nil || len(got.SVIDs) != 1 {
		select {
		case got = <-w.updates:
		case <-ctx.Done():
			t.Fatal("no update after rotation")
		}
	}
	assert.Equal(t, rotated.CertChain, got.SVIDs[0].Certificates[0].Raw)
	xb, err := got.Bundles.GetX509BundleForTrustDomain(td)
	require.NoError(t, err)
	assert.True(t, xb.HasX509Authority(next.cert))
}

func TestGoSpiffeJWT(t *testing.T) {
	ca := newTestCA(t)
	e := startServer(t, newTestSource(ca, appEntries(t, ca)...))
	ctx := testContext(t)
	addr := spiffewl.WithAddr(e.addr)

	svid, err := spiffewl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}}, addr)
	require.NoError(t, err)
	assert.Equal(t, appID, svid.ID)
	assert.Equal(t, time.Hour, svid.Expiry.Sub(time.Now()).Round(time.Hour))

	got, err := spiffewl.ValidateJWTSVID(ctx, svid.Marshal(), "cache", addr)
	require.NoError(t, err)
	assert.Equal(t, appID, got.ID)

	_, err = spiffewl.ValidateJWTSVID(ctx, svid.Marshal(), "other", addr)
	requireCode(t, err, codes.InvalidArgument, "audience")

	bundles, err := spiffewl.FetchJWTBundles(ctx, addr)
	require.NoError(t, err)
	_, err = jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"db"})
	require.NoError(t, err)

	_, err = spiffewl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: spiffeid.RequireFromString("spiffe://example.org/not-mine")}, addr)
	requireCode(t, err, codes.PermissionDenied, "no identity issued")

	assert.NotContains(t, e.logs.String(), svid.Marshal(), "tokens are never logged")
	// One per identity of the first fetch; the refused one counts none.
	assert.Equal(t, float64(2), e.metric(t, "tally_agent_svids_served_total", "type", "jwt"))
}
