package workloadapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/tallyid/tally/attest"
)

// These tests speak raw gRPC, to see what go-spiffe's client hides.

// call makes one call of each RPC; streams are read once.
var calls = map[string]func(context.Context, workload.SpiffeWorkloadAPIClient) error{
	"FetchX509SVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"FetchX509Bundles": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"FetchJWTSVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}})
		return err
	},
	"FetchJWTBundles": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"ValidateJWTSVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: "x.y.z"})
		return err
	},
	"FetchWITSVID": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchWITSVID(ctx, &workload.WITSVIDRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"FetchWITBundles": func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
		s, err := c.FetchWITBundles(ctx, &workload.WITBundlesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
}

func TestSecurityHeaderRequired(t *testing.T) {
	ca := newTestCA(t)
	// The attestor must never be reached without the header.
	attestor := attestorFunc(func(context.Context, attest.Process) ([]attest.Selector, error) {
		panic("attested a call without the security header")
	})
	e := startServer(t, newTestSource(ca, appEntries(t, ca)...), withAttestor(attestor))
	client := e.dial(t)

	headers := map[string]metadata.MD{
		"none":         nil,
		"false":        metadata.Pairs("workload.spiffe.io", "false"),
		"twice":        metadata.Pairs("workload.spiffe.io", "true", "workload.spiffe.io", "true"),
		"wrong key":    metadata.Pairs("workload-spiffe-io", "true"),
		"value casing": metadata.Pairs("workload.spiffe.io", "TRUE"),
	}
	for method, call := range calls {
		for name, md := range headers {
			t.Run(method+"/"+name, func(t *testing.T) {
				ctx := metadata.NewOutgoingContext(testContext(t), md)
				err := call(ctx, client)
				requireCode(t, err, codes.InvalidArgument, "security header missing from request")
			})
		}
	}
	assert.Zero(t, e.metric(t, "tally_agent_attestations_total", "result", "ok"))
}

func TestWITNotImplemented(t *testing.T) {
	ca := newTestCA(t)
	e := startServer(t, newTestSource(ca, appEntries(t, ca)...))
	client := e.dial(t)
	for _, method := range []string{"FetchWITSVID", "FetchWITBundles"} {
		err := calls[method](withHeader(testContext(t)), client)
		requireCode(t, err, codes.Unimplemented, "")
	}
}

func TestNoIdentity(t *testing.T) {
	ca := newTestCA(t)
	// Identities exist, but none for this process's uid.
	other := []attest.Selector{unixSel("uid:4000001")}
	e := startServer(t, newTestSource(ca, entry{selectors: other, svid: ca.x509SVID(t, appID, "")}))
	client := e.dial(t)
	ctx := withHeader(testContext(t))

	err := calls["FetchX509SVID"](ctx, client)
	requireCode(t, err, codes.PermissionDenied, "no identity issued")
	err = calls["FetchJWTSVID"](ctx, client)
	requireCode(t, err, codes.PermissionDenied, "no identity issued")

	// An attested caller without identity still gets the bundles, and may
	// validate tokens.
	require.NoError(t, calls["FetchX509Bundles"](ctx, client))
	require.NoError(t, calls["FetchJWTBundles"](ctx, client))
	token, err := ca.jwtSVID(appID, []string{"db"}, time.Hour)
	require.NoError(t, err)
	resp, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: token})
	require.NoError(t, err)
	assert.Equal(t, appID.String(), resp.SpiffeId)
}

func TestIdentityRemovedEndsStream(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	e := startServer(t, src)
	stream, err := e.dial(t).FetchX509SVID(withHeader(testContext(t)), &workload.X509SVIDRequest{})
	require.NoError(t, err)
	first, err := stream.Recv()
	require.NoError(t, err)
	require.Len(t, first.Svids, 2)

	src.setEntries() // the entries are deleted
	_, err = stream.Recv()
	requireCode(t, err, codes.PermissionDenied, "no identity issued")
	require.Eventually(t, func() bool { return src.open() == 0 }, waitFor, time.Millisecond,
		"the subscription is closed with the stream")
}

func TestX509SVIDResponse(t *testing.T) {
	ca := newTestCA(t)
	sels := []attest.Selector{selfUID}
	entries := []entry{
		{selectors: sels, svid: ca.x509SVID(t, appID, "dup")},
		{selectors: sels, svid: ca.x509SVID(t, appExtID, "dup")}, // dropped: hint taken
		{selectors: sels, svid: ca.x509SVID(t, sleepID, "")},
		{selectors: sels, svid: ca.x509SVID(t, spiffeid.RequireFromString("spiffe://example.org/x"), "")},
	}
	e := startServer(t, newTestSource(ca, entries...))
	stream, err := e.dial(t).FetchX509SVID(withHeader(testContext(t)), &workload.X509SVIDRequest{})
	require.NoError(t, err)
	resp, err := stream.Recv()
	require.NoError(t, err)

	var ids []string
	for _, s := range resp.Svids {
		ids = append(ids, s.SpiffeId)
		assert.Equal(t, ca.cert.Raw, s.Bundle, "each SVID carries the trust domain's X.509 authorities")
	}
	assert.Equal(t, []string{appID.String(), sleepID.String(), "spiffe://example.org/x"}, ids,
		"a later SVID with a hint already used is dropped; empty hints are not duplicates")
	assert.Equal(t, entries[0].svid.CertChain, resp.Svids[0].X509Svid)
	assert.Equal(t, entries[0].svid.Key, resp.Svids[0].X509SvidKey, "the key is PKCS#8 DER")
	assert.Empty(t, resp.FederatedBundles)
	assert.Empty(t, resp.Crl)
	assert.Contains(t, e.logs.String(), "hint is already used")
}

func TestManySVIDsInOneResponse(t *testing.T) {
	ca := newTestCA(t)
	const n = 1200
	entries := make([]entry, n)
	for i := range entries {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/ns/n%d/sa/s", i))
		entries[i] = entry{selectors: []attest.Selector{selfUID}, svid: ca.x509SVID(t, id, fmt.Sprint(i))}
	}
	e := startServer(t, newTestSource(ca, entries...))
	svids, err := spiffewl.FetchX509SVIDs(testContext(t), spiffewl.WithAddr(e.addr))
	require.NoError(t, err)
	require.Len(t, svids, n)
	assert.Equal(t, entries[n-1].svid.ID, svids[n-1].ID)
}

func TestBundleStreams(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	e := startServer(t, src)
	client := e.dial(t)
	ctx := withHeader(testContext(t))

	x509s, err := client.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	require.NoError(t, err)
	jwts, err := client.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	require.NoError(t, err)

	xr, err := x509s.Recv()
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"spiffe://example.org": ca.cert.Raw}, xr.Bundles)
	jr, err := jwts.Recv()
	require.NoError(t, err)
	require.Contains(t, jr.Bundles, "spiffe://example.org")
	jb, err := jwtbundle.Parse(td, jr.Bundles["spiffe://example.org"])
	require.NoError(t, err)
	assert.True(t, jb.HasJWTAuthority(ca.kid))

	// A new X.509 and JWT authority are published.
	next := newTestCA(t)
	next.kid = "jwt-key-2"
	b := ca.bundle()
	b.AddX509Authority(next.cert)
	require.NoError(t, b.AddJWTAuthority(next.kid, next.jwtKey.Public()))
	src.setBundle(b)

	xr, err = x509s.Recv()
	require.NoError(t, err)
	assert.Equal(t, append(append([]byte{}, ca.cert.Raw...), next.cert.Raw...), xr.Bundles["spiffe://example.org"])
	jr, err = jwts.Recv()
	require.NoError(t, err)
	jb, err = jwtbundle.Parse(td, jr.Bundles["spiffe://example.org"])
	require.NoError(t, err)
	assert.True(t, jb.HasJWTAuthority(ca.kid))
	assert.True(t, jb.HasJWTAuthority(next.kid))
}

func TestJWTRequests(t *testing.T) {
	ca := newTestCA(t)
	sels := []attest.Selector{selfUID}
	e := startServer(t, newTestSource(ca,
		entry{selectors: sels, svid: ca.x509SVID(t, appID, "h")},
		entry{selectors: sels, svid: ca.x509SVID(t, appExtID, "h")}, // same hint: dropped
		entry{selectors: sels, svid: ca.x509SVID(t, sleepID, "")},
	))
	client := e.dial(t)
	ctx := withHeader(testContext(t))

	t.Run("FetchJWTSVID", func(t *testing.T) {
		resp, err := client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}})
		require.NoError(t, err)
		var ids []string
		for _, s := range resp.Svids {
			ids = append(ids, s.SpiffeId)
		}
		assert.Equal(t, []string{appID.String(), sleepID.String()}, ids)

		resp, err = client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}, SpiffeId: appExtID.String()})
		require.NoError(t, err)
		require.Len(t, resp.Svids, 1)
		assert.Equal(t, appExtID.String(), resp.Svids[0].SpiffeId)
	})

	valid, err := ca.jwtSVID(appID, []string{"db"}, time.Hour)
	require.NoError(t, err)
	expired, err := ca.jwtSVID(appID, []string{"db"}, -time.Minute)
	require.NoError(t, err)
	stranger := newTestCA(t) // same kid, another key
	forged, err := stranger.jwtSVID(appID, []string{"db"}, time.Hour)
	require.NoError(t, err)
	otherTD, err := ca.jwtSVID(spiffeid.RequireFromString("spiffe://other.org/app"), []string{"db"}, time.Hour)
	require.NoError(t, err)

	invalid := []struct {
		name string
		call func() error
		msg  string
	}{
		{"fetch: no audience", func() error {
			_, err := client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{})
			return err
		}, "audience must be specified"},
		{"fetch: empty audience", func() error {
			_, err := client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db", ""}})
			return err
		}, "audience must not be empty"},
		{"fetch: malformed spiffe_id", func() error {
			_, err := client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}, SpiffeId: "spiffe://example.org/../x"})
			return err
		}, "spiffe_id"},
		{"validate: no audience", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Svid: valid})
			return err
		}, "audience must be specified"},
		{"validate: no svid", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db"})
			return err
		}, "svid must be specified"},
		{"validate: garbage", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: "not a jwt"})
			return err
		}, "unable to parse JWT token"},
		{"validate: wrong audience", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "cache", Svid: valid})
			return err
		}, "expected audience"},
		{"validate: expired", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: expired})
			return err
		}, "token has expired"},
		{"validate: bad signature", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: forged})
			return err
		}, "unable to get claims from token"},
		{"validate: other trust domain", func() error {
			_, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: otherTD})
			return err
		}, "no bundle found"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			requireCode(t, tt.call(), codes.InvalidArgument, tt.msg)
		})
	}

	t.Run("ValidateJWTSVID", func(t *testing.T) {
		resp, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: valid})
		require.NoError(t, err)
		assert.Equal(t, appID.String(), resp.SpiffeId)
		claims := resp.Claims.AsMap()
		assert.Equal(t, appID.String(), claims["sub"])
		assert.Equal(t, "yes", claims["tally_test"])
		assert.Contains(t, fmt.Sprint(claims["aud"]), "db")
		assert.NotZero(t, claims["exp"])
	})
	assert.NotContains(t, e.logs.String(), valid, "tokens are never logged")
}

func TestValidateJWTSVIDNoBundle(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	src.bundle = nil // before the agent's first sync
	e := startServer(t, src)
	token, err := ca.jwtSVID(appID, []string{"db"}, time.Hour)
	require.NoError(t, err)
	_, err = e.dial(t).ValidateJWTSVID(withHeader(testContext(t)), &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: token})
	requireCode(t, err, codes.Unavailable, "trust bundle not available yet")
}

type attestorFunc func(context.Context, attest.Process) ([]attest.Selector, error)

func (f attestorFunc) Attest(ctx context.Context, p attest.Process) ([]attest.Selector, error) {
	return f(ctx, p)
}

func TestAttestationOutcomes(t *testing.T) {
	tests := []struct {
		name     string
		attest   attestorFunc
		code     codes.Code
		msg      string
		result   string
		notShown string // must not reach the caller
	}{
		{
			name: "denied",
			attest: func(context.Context, attest.Process) ([]attest.Selector, error) {
				return nil, fmt.Errorf("%w: pod unknown", attest.ErrDenied)
			},
			code: codes.PermissionDenied, msg: "workload attestation denied", result: "denied",
		},
		{
			name:   "no selectors",
			attest: func(context.Context, attest.Process) ([]attest.Selector, error) { return nil, nil },
			code:   codes.PermissionDenied, msg: "workload attestation denied", result: "denied",
		},
		{
			name: "attestor failure",
			attest: func(context.Context, attest.Process) ([]attest.Selector, error) {
				return nil, errors.New("kubelet at 10.0.0.1 unreachable")
			},
			code: codes.Unavailable, msg: "workload attestation failed", result: "error", notShown: "10.0.0.1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t)
			e := startServer(t, newTestSource(ca, appEntries(t, ca)...), withAttestor(tt.attest))
			client := e.dial(t)
			for method, call := range calls {
				if strings.HasPrefix(method, "FetchWIT") {
					continue
				}
				err := call(withHeader(testContext(t)), client)
				requireCode(t, err, tt.code, tt.msg)
				if tt.notShown != "" {
					assert.NotContains(t, err.Error(), tt.notShown, method)
				}
			}
			assert.Equal(t, float64(5), e.metric(t, "tally_agent_attestations_total", "result", tt.result))
			if tt.notShown != "" {
				assert.Contains(t, e.logs.String(), tt.notShown, "the cause is logged")
			}
		})
	}
}

func TestSourceFailure(t *testing.T) {
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	src.subscribeErr = errors.New("cache: secret detail")
	e := startServer(t, src)
	client := e.dial(t)
	for _, method := range []string{"FetchX509SVID", "FetchJWTSVID"} {
		err := calls[method](withHeader(testContext(t)), client)
		requireCode(t, err, codes.Unavailable, "identities unavailable")
		assert.NotContains(t, err.Error(), "secret detail")
	}

	// A source refusal is PermissionDenied.
	src.mu.Lock()
	src.subscribeErr = fmt.Errorf("%w: agent not authorised", attest.ErrDenied)
	src.mu.Unlock()
	err := calls["FetchX509SVID"](withHeader(testContext(t)), client)
	requireCode(t, err, codes.PermissionDenied, "")
}

func TestJunkConnectionDoesNotDisturbOthers(t *testing.T) {
	ca := newTestCA(t)
	e := startServer(t, newTestSource(ca, appEntries(t, ca)...))

	// A connection that never speaks, and one that speaks garbage.
	idle, err := net.Dial("unix", e.socket)
	require.NoError(t, err)
	defer idle.Close()
	junk, err := net.Dial("unix", e.socket)
	require.NoError(t, err)
	defer junk.Close()
	_, err = junk.Write([]byte("GET / HTTP/1.1\r\nHost: agent\r\n\r\n\x00\xff\xfe garbage garbage garbage"))
	require.NoError(t, err)
	require.NoError(t, junk.SetReadDeadline(time.Now().Add(waitFor)))
	_, err = io.ReadAll(junk) // the server closes it (with a reset: the junk is unread)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}

	svids, err := spiffewl.FetchX509SVIDs(testContext(t), spiffewl.WithAddr(e.addr))
	require.NoError(t, err)
	require.Len(t, svids, 2)
}

func TestConcurrentStreams(t *testing.T) {
	const streams, conns = 500, 5
	ca := newTestCA(t)
	src := newTestSource(ca, appEntries(t, ca)...)
	e := startServer(t, src)
	clients := make([]workload.SpiffeWorkloadAPIClient, conns)
	for i := range clients {
		clients[i] = e.dial(t)
	}

	ctx, cancel := context.WithCancel(withHeader(testContext(t)))
	defer cancel()
	var g errgroup.Group
	var mu sync.Mutex
	var open []grpc.ServerStreamingClient[workload.X509SVIDResponse]
	for i := range streams {
		g.Go(func() error {
			stream, err := clients[i%conns].FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err != nil {
				return err
			}
			resp, err := stream.Recv()
			if err != nil {
				return fmt.Errorf("stream %d: %w", i, err)
			}
			if len(resp.Svids) != 2 {
				return fmt.Errorf("stream %d: %d SVIDs", i, len(resp.Svids))
			}
			mu.Lock()
			open = append(open, stream)
			mu.Unlock()
			return nil
		})
	}
	require.NoError(t, g.Wait())
	require.Len(t, open, streams)
	assert.Equal(t, float64(streams), e.metric(t, "tally_agent_workload_connections"))
	assert.Equal(t, float64(streams), e.metric(t, "tally_agent_attestations_total", "result", "ok"))

	// One more update reaches every stream.
	src.setEntries(appEntries(t, ca)[:1]...)
	for i, stream := range open {
		resp, err := stream.Recv()
		require.NoError(t, err, "stream %d", i)
		require.Len(t, resp.Svids, 1)
	}

	cancel()
	require.Eventually(t, func() bool {
		return e.metric(t, "tally_agent_workload_connections") == 0 && src.open() == 0
	}, waitFor, 5*time.Millisecond, "streams and subscriptions end with their callers")
}
