package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

var discard = slog.New(slog.DiscardHandler)

// requireOAuth checks that err is a status of code whose ErrorInfo has
// reason and rule ("" for none).
func requireOAuth(t *testing.T, err error, code codes.Code, reason, rule string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	require.True(t, ok, "not a status: %v", err)
	require.Equal(t, code, st.Code(), "status: %v", err)
	require.Len(t, st.Details(), 1)
	info, ok := st.Details()[0].(*errdetails.ErrorInfo)
	require.True(t, ok, "detail %T", st.Details()[0])
	require.Equal(t, "oauth2", info.GetDomain())
	require.Equal(t, reason, info.GetReason())
	if rule == "" {
		require.Empty(t, info.GetMetadata())
	} else {
		require.Equal(t, map[string]string{"rule": rule}, info.GetMetadata())
	}
	return st
}

func TestOAuthStatus(t *testing.T) {
	for _, tc := range []struct {
		code string
		want codes.Code
	}{
		{exchange.CodeInvalidRequest, codes.InvalidArgument},
		{exchange.CodeInvalidScope, codes.InvalidArgument},
		{exchange.CodeInvalidTarget, codes.InvalidArgument},
		{exchange.CodeUnsupportedGrant, codes.InvalidArgument},
		{exchange.CodeInvalidGrant, codes.PermissionDenied},
		{exchange.CodeUnauthorizedClient, codes.PermissionDenied},
		{exchange.CodeInvalidClient, codes.Unauthenticated},
		{exchange.CodeUnavailable, codes.Unavailable},
	} {
		t.Run(tc.code, func(t *testing.T) {
			st := requireOAuth(t, oauthStatus(discard, &exchange.Error{Code: tc.code, Description: "because"}), tc.want, tc.code, "")
			require.Equal(t, "because", st.Message())
			st = requireOAuth(t, oauthStatus(discard, &exchange.Error{Code: tc.code, Description: "by policy", Rule: "no-prod"}), tc.want, tc.code, "no-prod")
			require.Equal(t, "by policy", st.Message())
		})
	}
	t.Run("server_error hides its cause", func(t *testing.T) {
		err := exchange.AsError(errors.New("signer: key slot 3 unreadable"))
		st := requireOAuth(t, oauthStatus(discard, err), codes.Internal, exchange.CodeServerError, "")
		require.Equal(t, "internal error", st.Message())
	})
	t.Run("an unknown code is a server_error", func(t *testing.T) {
		st := requireOAuth(t, oauthStatus(discard, &exchange.Error{Code: "made_up", Description: "secret detail"}), codes.Internal, exchange.CodeServerError, "")
		require.Equal(t, "internal error", st.Message())
	})
}

// fakeExchanger records what it is asked and answers with resp or err.
type fakeExchanger struct {
	mu     sync.Mutex
	calls  []exchange.Caller
	reqs   []exchange.Request
	answer error
}

func (f *fakeExchanger) Exchange(_ context.Context, c exchange.Caller, r exchange.Request) (exchange.Response, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls, f.reqs = append(f.calls, c), append(f.reqs, r)
	if f.answer != nil {
		return exchange.Response{}, f.answer
	}
	return exchange.Response{AccessToken: "tok", IssuedTokenType: exchange.TypeJWT, TokenType: exchange.TokenTypeNA, ExpiresIn: 300, Scope: "read"}, nil
}

// bundleAuthority is an Authority with a bundle and nothing else.
type bundleAuthority struct {
	Authority
	bundle *spiffebundle.Bundle
}

func (a bundleAuthority) Bundle() *spiffebundle.Bundle { return a.bundle }

// exchangeEnv is a Node on a real registry and store, with two attested
// agents: a, whose workload entry is exchangeEnv.entryID, and b.
type exchangeEnv struct {
	node    *Node
	ex      *fakeExchanger
	entryID string
	a, b    context.Context // calls by each agent, from 10.0.0.1 / 10.0.0.2
}

func newExchangeEnv(t *testing.T, withExchanger bool) *exchangeEnv {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ctx := context.Background()
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir(), MemTableSize: 1 << 20})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	reg := registry.New(registry.Config{TrustDomain: td, Store: st, Limits: registry.Limits{MaxTTL: time.Hour}})
	require.NoError(t, reg.Load(ctx))

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{td.ID().URL()}}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	agent := func(name, ip string, serial int64) context.Context {
		id := spiffeid.RequireFromPath(td, "/tally/agent/join_token/"+name)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(serial),
			NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), URIs: []*url.URL{id.URL()},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, caCert, key.Public(), caKey)
		require.NoError(t, err)
		cert, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		require.NoError(t, st.PutAgent(ctx, store.Agent{ID: id.String(), AttestationType: "join_token", SerialNumber: serialString(cert), ExpiresAt: cert.NotAfter}))
		return peer.NewContext(ctx, &peer.Peer{
			Addr:     &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000},
			AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}},
		})
	}
	e := &exchangeEnv{ex: &fakeExchanger{}, a: agent("a", "10.0.0.1", 10), b: agent("b", "10.0.0.2", 11)}
	entries, err := reg.CreateEntries(ctx, []store.Entry{{SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/tally/agent/join_token/a",
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}}})
	require.NoError(t, err)
	e.entryID = entries[0].ID

	cfg := NodeConfig{TrustDomain: td, Authority: bundleAuthority{bundle: spiffebundle.FromX509Authorities(td, []*x509.Certificate{caCert})},
		Entries: reg, Agents: st}
	if withExchanger {
		cfg.Exchanger = e.ex
	}
	e.node = NewNode(cfg)
	return e
}

func (e *exchangeEnv) request() *tallyv1.ExchangeTokenRequest {
	return &tallyv1.ExchangeTokenRequest{EntryId: e.entryID, Exchange: &tallyv1.ExchangeRequest{
		SubjectToken: "user-token", SubjectTokenType: exchange.TypeIDToken, Audience: []string{"spiffe://example.org/db"},
		Resource: []string{"https://db.example.org"}, Scope: "read",
	}}
}

func TestExchangeToken(t *testing.T) {
	e := newExchangeEnv(t, true)

	t.Run("acts for the entry's SPIFFE ID, authenticated by its agent", func(t *testing.T) {
		resp, err := e.node.ExchangeToken(e.a, e.request())
		require.NoError(t, err)
		require.Equal(t, "tok", resp.GetAccessToken())
		require.Equal(t, exchange.TypeJWT, resp.GetIssuedTokenType())
		require.Equal(t, exchange.TokenTypeNA, resp.GetTokenType())
		require.EqualValues(t, 300, resp.GetExpiresIn())
		require.Equal(t, "read", resp.GetScope())

		e.ex.mu.Lock()
		defer e.ex.mu.Unlock()
		require.Len(t, e.ex.calls, 1)
		require.Equal(t, exchange.Caller{
			ID:    spiffeid.RequireFromString("spiffe://example.org/web"),
			Authn: exchange.AuthnAgent,
			Agent: spiffeid.RequireFromString("spiffe://example.org/tally/agent/join_token/a"),
			Addr:  "10.0.0.1",
		}, e.ex.calls[0])
		require.Equal(t, exchange.Request{
			GrantType: exchange.GrantType, SubjectToken: "user-token", SubjectTokenType: exchange.TypeIDToken,
			Audience: []string{"spiffe://example.org/db"}, Resource: []string{"https://db.example.org"}, Scope: "read",
		}, e.ex.reqs[0])
	})

	refused := func(t *testing.T, ctx context.Context, req *tallyv1.ExchangeTokenRequest, code codes.Code) {
		t.Helper()
		e.ex.mu.Lock()
		before := len(e.ex.calls)
		e.ex.mu.Unlock()
		_, err := e.node.ExchangeToken(ctx, req)
		require.Equal(t, code, status.Code(err), "%v", err)
		e.ex.mu.Lock()
		defer e.ex.mu.Unlock()
		require.Len(t, e.ex.calls, before, "refused before the exchange")
	}
	t.Run("an entry the agent may not issue", func(t *testing.T) {
		refused(t, e.b, e.request(), codes.PermissionDenied)
	})
	t.Run("an unknown entry", func(t *testing.T) {
		req := e.request()
		req.EntryId = "nope"
		refused(t, e.a, req, codes.NotFound)
	})
	t.Run("no exchange", func(t *testing.T) {
		req := e.request()
		req.Exchange = nil
		refused(t, e.a, req, codes.InvalidArgument)
	})
	t.Run("a spiffe_id that is not the entry's", func(t *testing.T) {
		req := e.request()
		req.Exchange.SpiffeId = "spiffe://example.org/other"
		refused(t, e.a, req, codes.InvalidArgument)
	})
	t.Run("no agent SVID", func(t *testing.T) {
		refused(t, fromPeer("10.0.0.1"), e.request(), codes.Unauthenticated)
	})

	t.Run("a refused exchange carries its OAuth error", func(t *testing.T) {
		e.ex.mu.Lock()
		e.ex.answer = &exchange.Error{Code: exchange.CodeInvalidGrant, Description: "subject token expired", Rule: "fresh-only"}
		e.ex.mu.Unlock()
		_, err := e.node.ExchangeToken(e.a, e.request())
		st := requireOAuth(t, err, codes.PermissionDenied, exchange.CodeInvalidGrant, "fresh-only")
		require.Equal(t, "subject token expired", st.Message())
	})
	t.Run("any other failure is a server_error", func(t *testing.T) {
		e.ex.mu.Lock()
		e.ex.answer = errors.New("store: disk on fire")
		e.ex.mu.Unlock()
		_, err := e.node.ExchangeToken(e.a, e.request())
		st := requireOAuth(t, err, codes.Internal, exchange.CodeServerError, "")
		require.Equal(t, "internal error", st.Message())
	})
}

func TestExchangeTokenNotConfigured(t *testing.T) {
	e := newExchangeEnv(t, false)
	_, err := e.node.ExchangeToken(e.a, e.request())
	require.Equal(t, codes.Unimplemented, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "not configured")
}
