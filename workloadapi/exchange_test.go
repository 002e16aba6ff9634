package workloadapi_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tallyid/tally/attest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// fakeExchanger gives callers with selfUID the identities ids and records
// the exchanges it is asked to forward, answering with answer or a token.
type fakeExchanger struct {
	ids []workloadapi.Identity

	mu      sync.Mutex
	answer  error
	forward []workloadapi.Identity
	reqs    []*tallyv1.ExchangeRequest
}

func (f *fakeExchanger) Identities(_ context.Context, sels []attest.Selector) ([]workloadapi.Identity, error) {
	if !slices.Contains(sels, selfUID) {
		return nil, nil
	}
	return f.ids, nil
}

func (f *fakeExchanger) ExchangeToken(_ context.Context, id workloadapi.Identity, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forward, f.reqs = append(f.forward, id), append(f.reqs, req)
	if f.answer != nil {
		return nil, f.answer
	}
	return &tallyv1.ExchangeResponse{AccessToken: "tok-for-" + id.EntryID, IssuedTokenType: "urn:ietf:params:oauth:token-type:jwt", TokenType: "N_A", ExpiresIn: 300}, nil
}

func (f *fakeExchanger) set(answer error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

// forwarded returns the identities forwarded for so far.
func (f *fakeExchanger) forwarded() []workloadapi.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.forward)
}

func withExchanger(x workloadapi.Exchanger) envOption {
	return func(c *workloadapi.Config) { c.Exchanger = x }
}

func (e *env) dialExchange(t testing.TB) tallyv1.TokenExchangeClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return tallyv1.NewTokenExchangeClient(conn)
}

func exchangeReq() *tallyv1.ExchangeRequest {
	return &tallyv1.ExchangeRequest{SubjectToken: "user-token", SubjectTokenType: "urn:ietf:params:oauth:token-type:id_token", Audience: []string{"spiffe://example.org/db"}}
}

func TestExchange(t *testing.T) {
	ca := newTestCA(t)
	x := &fakeExchanger{ids: []workloadapi.Identity{{EntryID: "e-app", ID: appID}, {EntryID: "e-ext", ID: appExtID}}}
	e := startServer(t, newTestSource(ca), withExchanger(x))
	client := e.dialExchange(t)

	// refused checks that req is refused with code and not forwarded.
	refused := func(t *testing.T, ctx context.Context, req *tallyv1.ExchangeRequest, code codes.Code, msg string) {
		t.Helper()
		before := len(x.forwarded())
		_, err := client.Exchange(ctx, req)
		requireCode(t, err, code, msg)
		require.Len(t, x.forwarded(), before, "not forwarded")
	}

	t.Run("the security header is required", func(t *testing.T) {
		refused(t, testContext(t), exchangeReq(), codes.InvalidArgument, "security header")
	})
	t.Run("forwards for the caller's first identity", func(t *testing.T) {
		resp, err := client.Exchange(withHeader(testContext(t)), exchangeReq())
		require.NoError(t, err)
		require.Equal(t, "tok-for-e-app", resp.GetAccessToken())
		got := x.forwarded()
		require.Equal(t, workloadapi.Identity{EntryID: "e-app", ID: appID}, got[len(got)-1])
		x.mu.Lock()
		defer x.mu.Unlock()
		require.True(t, proto.Equal(exchangeReq(), x.reqs[len(x.reqs)-1]), "the request as the workload sent it")
	})
	t.Run("spiffe_id chooses among the caller's identities", func(t *testing.T) {
		req := exchangeReq()
		req.SpiffeId = appExtID.String()
		resp, err := client.Exchange(withHeader(testContext(t)), req)
		require.NoError(t, err)
		require.Equal(t, "tok-for-e-ext", resp.GetAccessToken())
	})
	t.Run("a spiffe_id the caller does not have", func(t *testing.T) {
		req := exchangeReq()
		req.SpiffeId = sleepID.String()
		refused(t, withHeader(testContext(t)), req, codes.PermissionDenied, "no identity")
	})
	t.Run("a malformed spiffe_id", func(t *testing.T) {
		req := exchangeReq()
		req.SpiffeId = "not a spiffe id"
		refused(t, withHeader(testContext(t)), req, codes.InvalidArgument, "spiffe_id")
	})
	t.Run("a subject token over 16 KiB", func(t *testing.T) {
		req := exchangeReq()
		req.SubjectToken = strings.Repeat("a", 16<<10+1)
		refused(t, withHeader(testContext(t)), req, codes.InvalidArgument, "subject_token")
		req.SubjectToken = strings.Repeat("a", 16<<10)
		_, err := client.Exchange(withHeader(testContext(t)), req)
		require.NoError(t, err, "16 KiB is allowed")
	})
	t.Run("the server's refusal passes through unchanged", func(t *testing.T) {
		st, err := status.New(codes.PermissionDenied, "subject token expired").WithDetails(
			&errdetails.ErrorInfo{Domain: "oauth2", Reason: "invalid_grant", Metadata: map[string]string{"rule": "fresh-only"}})
		require.NoError(t, err)
		x.set(st.Err())
		defer x.set(nil)
		_, err = client.Exchange(withHeader(testContext(t)), exchangeReq())
		got := status.Convert(err)
		require.Equal(t, codes.PermissionDenied, got.Code())
		require.Equal(t, "subject token expired", got.Message())
		require.Len(t, got.Details(), 1)
		info, ok := got.Details()[0].(*errdetails.ErrorInfo)
		require.True(t, ok, "%T", got.Details()[0])
		require.True(t, proto.Equal(st.Details()[0].(*errdetails.ErrorInfo), info), "ErrorInfo %v", info)
	})
	t.Run("a rate-limited identity", func(t *testing.T) {
		x.set(fmt.Errorf("agent: too many: %w", workloadapi.ErrRateLimited))
		defer x.set(nil)
		_, err := client.Exchange(withHeader(testContext(t)), exchangeReq())
		requireCode(t, err, codes.ResourceExhausted, "token exchanges")
	})
	t.Run("no connection to the server", func(t *testing.T) {
		x.set(errors.New("agent: not connected"))
		defer x.set(nil)
		_, err := client.Exchange(withHeader(testContext(t)), exchangeReq())
		requireCode(t, err, codes.Unavailable, "")
	})
	require.NotContains(t, e.logs.String(), "user-token", "no subject token in the log")
	require.NotContains(t, e.logs.String(), "tok-for-", "no issued token in the log")
}

func TestExchangeWithoutIdentity(t *testing.T) {
	x := &fakeExchanger{}
	e := startServer(t, newTestSource(newTestCA(t)), withExchanger(x))
	_, err := e.dialExchange(t).Exchange(withHeader(testContext(t)), exchangeReq())
	requireCode(t, err, codes.PermissionDenied, "no identity")
	require.Empty(t, x.forwarded())
}

func TestExchangeNotServedWithoutExchanger(t *testing.T) {
	e := startServer(t, newTestSource(newTestCA(t)))
	_, err := e.dialExchange(t).Exchange(withHeader(testContext(t)), exchangeReq())
	requireCode(t, err, codes.Unimplemented, "")
}
