package agent

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// ExchangeToken answers for the entry it is asked for, and refuses the
// subject token "expired" as the server does, with an ErrorInfo.
func (n *testNode) ExchangeToken(_ context.Context, req *tallyv1.ExchangeTokenRequest) (*tallyv1.ExchangeResponse, error) {
	n.calls <- "exchange:" + req.GetEntryId() + ":" + req.GetExchange().GetSubjectToken()
	if req.GetExchange().GetSubjectToken() == "expired" {
		st, err := status.New(codes.PermissionDenied, "subject token expired").WithDetails(
			&errdetails.ErrorInfo{Domain: "oauth2", Reason: "invalid_grant", Metadata: map[string]string{"rule": "fresh-only"}})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	return &tallyv1.ExchangeResponse{AccessToken: "tok-for-" + req.GetEntryId(), TokenType: "N_A", ExpiresIn: 300}, nil
}

func TestExchangerForwardsToTheNodeAPI(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	n := startTestNode(t, clk)
	s := openTestSession(t, n, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.Start(ctx))
	require.Equal(t, "attest", n.next(t))
	cache := NewCache(CacheConfig{Minter: failingMinter{}, Clock: clk, JWTMintRate: 1, JWTMintBurst: 3})
	x := NewExchanger(cache, s)
	web := workloadapi.Identity{EntryID: "e1", ID: spiffeid.RequireFromString("spiffe://example.org/web")}

	resp, err := x.ExchangeToken(ctx, web, &tallyv1.ExchangeRequest{SubjectToken: "user-token"})
	require.NoError(t, err)
	require.Equal(t, "exchange:e1:user-token", n.next(t))
	require.Equal(t, "tok-for-e1", resp.GetAccessToken())

	_, err = x.ExchangeToken(ctx, web, &tallyv1.ExchangeRequest{SubjectToken: "expired"})
	require.Equal(t, "exchange:e1:expired", n.next(t))
	st, ok := status.FromError(err)
	require.True(t, ok, "the server's status, unwrapped: %v", err)
	require.Equal(t, codes.PermissionDenied, st.Code())
	require.Equal(t, "subject token expired", st.Message())
	require.Len(t, st.Details(), 1)
	require.Equal(t, "invalid_grant", st.Details()[0].(*errdetails.ErrorInfo).GetReason())

	// The burst of 3 is spent (refusals count): the next waits for the rate.
	_, err = x.ExchangeToken(ctx, web, &tallyv1.ExchangeRequest{SubjectToken: "user-token"})
	require.NoError(t, err)
	require.Equal(t, "exchange:e1:user-token", n.next(t))
	_, err = x.ExchangeToken(ctx, web, &tallyv1.ExchangeRequest{SubjectToken: "user-token"})
	require.ErrorIs(t, err, workloadapi.ErrRateLimited)
	other := workloadapi.Identity{EntryID: "e2", ID: spiffeid.RequireFromString("spiffe://example.org/other")}
	_, err = x.ExchangeToken(ctx, other, &tallyv1.ExchangeRequest{SubjectToken: "user-token"})
	require.NoError(t, err, "another identity has a budget of its own")
	require.Equal(t, "exchange:e2:user-token", n.next(t))
	clk.Step(time.Second)
	_, err = x.ExchangeToken(ctx, web, &tallyv1.ExchangeRequest{SubjectToken: "user-token"})
	require.NoError(t, err, "a second later")
	require.Equal(t, "exchange:e1:user-token", n.next(t))
}

func TestExchangerIdentities(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	cache := NewCache(CacheConfig{Minter: failingMinter{}, Clock: clk})
	x := NewExchanger(cache, &Session{})
	sels := []attest.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:2"}}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := x.Identities(ctx, sels)
	require.ErrorIs(t, err, context.DeadlineExceeded, "before the first sync")

	older, newer := testEntry("b", "spiffe://example.org/old", 1, "uid:1"), testEntry("a", "spiffe://example.org/new", 1, "uid:1", "gid:2")
	older.CreatedAt, newer.CreatedAt = time.Unix(100, 0), time.Unix(200, 0)
	cache.Apply(syncUpdate{Reset: true, Upserts: []*entry{
		newer, older,
		testEntry("c", "spiffe://example.org/not-mine", 1, "uid:1", "gid:3"),
	}})
	ids, err := x.Identities(context.Background(), sels)
	require.NoError(t, err)
	require.Equal(t, []workloadapi.Identity{
		{EntryID: "b", ID: spiffeid.RequireFromString("spiffe://example.org/old")},
		{EntryID: "a", ID: spiffeid.RequireFromString("spiffe://example.org/new")},
	}, ids, "oldest entry first, like the X509-SVIDs")

	ids, err = x.Identities(context.Background(), []attest.Selector{{Type: "unix", Value: "uid:9"}})
	require.NoError(t, err)
	require.Empty(t, ids)
}
