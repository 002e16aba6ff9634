package delegation

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tallyid/tally/ca/exchange"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// exchangeServer is a TokenExchange service that refuses calls without the
// Workload API's security header, records the requests, and answers with
// resp or err.
type exchangeServer struct {
	tallyv1.UnimplementedTokenExchangeServer

	mu   sync.Mutex
	reqs []*tallyv1.ExchangeRequest
	resp *tallyv1.ExchangeResponse
	err  error
}

func (s *exchangeServer) Exchange(ctx context.Context, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return nil, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
	return s.resp, s.err
}

func (s *exchangeServer) set(resp *tallyv1.ExchangeResponse, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resp, s.err = resp, err
}

func (s *exchangeServer) last(t *testing.T) *tallyv1.ExchangeRequest {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NotEmpty(t, s.reqs)
	return s.reqs[len(s.reqs)-1]
}

// startExchangeServer serves s on a Unix socket in a fresh temporary
// directory until the test ends, and returns its unix:// address.
func startExchangeServer(t *testing.T, s *exchangeServer) string {
	t.Helper()
	// Not t.TempDir(): its path can exceed the 108 bytes of a socket address.
	dir, err := os.MkdirTemp("", "delegation")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)

	srv := grpc.NewServer()
	tallyv1.RegisterTokenExchangeServer(srv, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return "unix://" + socket
}

func newTestClient(t *testing.T, addr string) *Client {
	t.Helper()
	c, err := NewClient(addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// refusal is the status the token service refuses with.
func refusal(t *testing.T, code codes.Code, msg, domain, reason, rule string) error {
	t.Helper()
	info := &errdetails.ErrorInfo{Domain: domain, Reason: reason}
	if rule != "" {
		info.Metadata = map[string]string{"rule": rule}
	}
	st, err := status.New(code, msg).WithDetails(info)
	require.NoError(t, err)
	return st.Err()
}

func TestClientExchange(t *testing.T) {
	srv := &exchangeServer{resp: &tallyv1.ExchangeResponse{
		AccessToken:     "issued.jwt.token",
		IssuedTokenType: TokenTypeJWT,
		TokenType:       "N_A",
		ExpiresIn:       300,
		Scope:           "orders.read billing.read",
	}}
	c := newTestClient(t, startExchangeServer(t, srv))
	ctx := context.Background()

	issued, err := c.Exchange(ctx, ExchangeRequest{
		SubjectToken:       "user.id.token",
		SubjectTokenType:   TokenTypeIDToken,
		RequestedTokenType: TokenTypeJWT,
		Audience:           []string{"spiffe://example.org/billing"},
		Scope:              []string{"orders.read", "billing.read"},
		Resource:           []string{"https://billing.example.org"},
		SPIFFEID:           frontendID,
	})
	require.NoError(t, err)
	require.Equal(t, &Issued{
		Token:           "issued.jwt.token",
		IssuedTokenType: TokenTypeJWT,
		TokenType:       "N_A",
		ExpiresIn:       5 * time.Minute,
		Scope:           []string{"orders.read", "billing.read"},
	}, issued)
	require.True(t, proto.Equal(&tallyv1.ExchangeRequest{
		SubjectToken:       "user.id.token",
		SubjectTokenType:   TokenTypeIDToken,
		RequestedTokenType: TokenTypeJWT,
		Audience:           []string{"spiffe://example.org/billing"},
		Scope:              "orders.read billing.read",
		Resource:           []string{"https://billing.example.org"},
		SpiffeId:           frontendID.String(),
	}, srv.last(t)), srv.last(t))

	// The convenience calls choose the token types.
	for _, tc := range []struct {
		name     string
		call     func() (*Issued, error)
		want     *tallyv1.ExchangeRequest
		respType string
	}{
		{
			name: "OnBehalfOf a JWT-SVID",
			call: func() (*Issued, error) {
				return c.OnBehalfOf(ctx, &Token{Kind: JWTSVID, Raw: "inbound.jwt"}, "spiffe://example.org/billing", "billing.read")
			},
			want: &tallyv1.ExchangeRequest{
				SubjectToken: "inbound.jwt", SubjectTokenType: TokenTypeJWT, RequestedTokenType: TokenTypeJWT,
				Audience: []string{"spiffe://example.org/billing"}, Scope: "billing.read",
			},
			respType: TokenTypeJWT,
		},
		{
			name: "OnBehalfOf a Txn-Token",
			call: func() (*Issued, error) {
				return c.OnBehalfOf(ctx, &Token{Kind: TxnToken, Raw: "inbound.txn"}, "")
			},
			want: &tallyv1.ExchangeRequest{
				SubjectToken: "inbound.txn", SubjectTokenType: TokenTypeTxnToken, RequestedTokenType: TokenTypeTxnToken,
			},
			respType: TokenTypeTxnToken,
		},
		{
			name: "ForIDToken",
			call: func() (*Issued, error) { return c.ForIDToken(ctx, "id.token", "spiffe://example.org/orders", "a", "b") },
			want: &tallyv1.ExchangeRequest{
				SubjectToken: "id.token", SubjectTokenType: TokenTypeIDToken, RequestedTokenType: TokenTypeJWT,
				Audience: []string{"spiffe://example.org/orders"}, Scope: "a b",
			},
			respType: TokenTypeJWT,
		},
		{
			name: "ForAccessToken",
			call: func() (*Issued, error) { return c.ForAccessToken(ctx, "access.token", "spiffe://example.org/orders") },
			want: &tallyv1.ExchangeRequest{
				SubjectToken: "access.token", SubjectTokenType: TokenTypeAccessToken, RequestedTokenType: TokenTypeJWT,
				Audience: []string{"spiffe://example.org/orders"},
			},
			respType: TokenTypeJWT,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.set(&tallyv1.ExchangeResponse{AccessToken: "t", IssuedTokenType: tc.respType, TokenType: "N_A", ExpiresIn: 60}, nil)
			issued, err := tc.call()
			require.NoError(t, err)
			require.Equal(t, tc.respType, issued.IssuedTokenType)
			require.True(t, proto.Equal(tc.want, srv.last(t)), "want %v\ngot  %v", tc.want, srv.last(t))
		})
	}

	_, err = c.OnBehalfOf(ctx, &Token{Kind: JWTSVID}, "x")
	require.ErrorContains(t, err, "no inbound token")
	_, err = c.Exchange(ctx, ExchangeRequest{SubjectTokenType: TokenTypeIDToken})
	require.ErrorContains(t, err, "no subject token")
}

func TestClientErrors(t *testing.T) {
	srv := &exchangeServer{}
	c := newTestClient(t, startExchangeServer(t, srv))
	req := ExchangeRequest{SubjectToken: "s", SubjectTokenType: TokenTypeIDToken, Audience: []string{"a"}}

	t.Run("refusal with a rule", func(t *testing.T) {
		srv.set(nil, refusal(t, codes.PermissionDenied, "scope billing.write is not granted", "oauth2", "invalid_scope", "frontend-read-only"))
		_, err := c.Exchange(context.Background(), req)
		var refused *ExchangeError
		require.ErrorAs(t, err, &refused)
		require.Equal(t, "invalid_scope", refused.Code)
		require.Equal(t, "scope billing.write is not granted", refused.Description)
		require.Equal(t, "frontend-read-only", refused.Rule)
		require.EqualError(t, err, "delegation: exchange refused: invalid_scope: scope billing.write is not granted (rule frontend-read-only)")
		require.Equal(t, codes.PermissionDenied, status.Code(err))
	})

	t.Run("refusal without a rule", func(t *testing.T) {
		srv.set(nil, refusal(t, codes.Unauthenticated, "subject token expired", "oauth2", "invalid_grant", ""))
		_, err := c.Exchange(context.Background(), req)
		var refused *ExchangeError
		require.ErrorAs(t, err, &refused)
		require.Equal(t, "invalid_grant", refused.Code)
		require.Empty(t, refused.Rule)
		require.EqualError(t, err, "delegation: exchange refused: invalid_grant: subject token expired")
	})

	t.Run("ErrorInfo of another domain", func(t *testing.T) {
		srv.set(nil, refusal(t, codes.Internal, "boom", "example.com", "invalid_scope", "r"))
		_, err := c.Exchange(context.Background(), req)
		var refused *ExchangeError
		require.False(t, errors.As(err, &refused))
		require.Equal(t, codes.Internal, status.Code(err))
		require.ErrorContains(t, err, "delegation: exchange: ")
	})

	t.Run("plain gRPC error", func(t *testing.T) {
		srv.set(nil, status.Error(codes.Unavailable, "server unreachable"))
		_, err := c.Exchange(context.Background(), req)
		var refused *ExchangeError
		require.False(t, errors.As(err, &refused))
		require.Equal(t, codes.Unavailable, status.Code(err))
	})

	t.Run("unknown issued token type", func(t *testing.T) {
		srv.set(&tallyv1.ExchangeResponse{AccessToken: "t", IssuedTokenType: "urn:ietf:params:oauth:token-type:saml2"}, nil)
		_, err := c.Exchange(context.Background(), req)
		require.ErrorContains(t, err, "neither a JWT-SVID nor a Txn-Token")
	})

	t.Run("no token issued", func(t *testing.T) {
		srv.set(&tallyv1.ExchangeResponse{IssuedTokenType: TokenTypeJWT}, nil)
		_, err := c.Exchange(context.Background(), req)
		require.ErrorContains(t, err, "no token")
	})
}

// TestExchangeServerRequiresHeader shows that the Client passing against
// exchangeServer sends the Workload API's security header.
func TestExchangeServerRequiresHeader(t *testing.T) {
	addr := startExchangeServer(t, &exchangeServer{resp: &tallyv1.ExchangeResponse{AccessToken: "t", IssuedTokenType: TokenTypeJWT}})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	_, err = tallyv1.NewTokenExchangeClient(conn).Exchange(context.Background(), &tallyv1.ExchangeRequest{SubjectToken: "s"})
	require.Equal(t, codes.InvalidArgument, status.Code(err), err)

	_, err = newTestClient(t, addr).Exchange(context.Background(), ExchangeRequest{SubjectToken: "s", SubjectTokenType: TokenTypeJWT})
	require.NoError(t, err)
}

func TestNewClientAddress(t *testing.T) {
	addr := startExchangeServer(t, &exchangeServer{resp: &tallyv1.ExchangeResponse{AccessToken: "t", IssuedTokenType: TokenTypeJWT}})

	t.Setenv(workloadapi.SocketEnv, "")
	_, err := NewClient("")
	require.ErrorContains(t, err, "SPIFFE_ENDPOINT_SOCKET is not set")

	_, err = NewClient("/run/agent.sock")
	require.ErrorContains(t, err, `agent address "/run/agent.sock"`)

	t.Setenv(workloadapi.SocketEnv, addr)
	_, err = newTestClient(t, "").Exchange(context.Background(), ExchangeRequest{SubjectToken: "s", SubjectTokenType: TokenTypeJWT})
	require.NoError(t, err)
}

func TestIssuedSetHeader(t *testing.T) {
	r, err := http.NewRequest(http.MethodGet, "http://billing", nil)
	require.NoError(t, err)
	(&Issued{Token: "svid", IssuedTokenType: TokenTypeJWT}).SetHeader(r)
	require.Equal(t, "Bearer svid", r.Header.Get("Authorization"))
	require.Empty(t, r.Header.Get(TxnTokenHeader))

	r, err = http.NewRequest(http.MethodGet, "http://billing", nil)
	require.NoError(t, err)
	(&Issued{Token: "txn", IssuedTokenType: TokenTypeTxnToken}).SetHeader(r)
	require.Equal(t, "txn", r.Header.Get(TxnTokenHeader))
	require.Empty(t, r.Header.Get("Authorization"))
}

// TestConstantsMatchServer: the URIs this package duplicates are those of
// the server's ca/exchange.
func TestConstantsMatchServer(t *testing.T) {
	require.Equal(t, exchange.TypeJWT, TokenTypeJWT)
	require.Equal(t, exchange.TypeTxnToken, TokenTypeTxnToken)
	require.Equal(t, exchange.TypeIDToken, TokenTypeIDToken)
	require.Equal(t, exchange.TypeAccess, TokenTypeAccessToken)
	require.Equal(t, exchange.TxnTokenTyp, txnTokenTyp)
	require.Equal(t, exchange.MaxTokenBytes, MaxTokenSize)
}
