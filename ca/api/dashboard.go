package api

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// CreateDashboardToken signs a short-lived bearer token that opens the
// read-only dashboard. The token is audited by its expiry, never logged.
func (a *Admin) CreateDashboardToken(ctx context.Context, req *tallyv1.CreateDashboardTokenRequest) (*tallyv1.CreateDashboardTokenResponse, error) {
	if a.cfg.DashboardTokens == nil {
		return nil, status.Error(codes.Unimplemented, "the dashboard is not configured on this server")
	}
	ttl, err := ttlFromSeconds("ttl", req.GetTtlSeconds())
	switch {
	case err != nil:
		return nil, a.fail(ctx, "dashboard_token", "", err)
	case ttl < 0:
		return nil, a.fail(ctx, "dashboard_token", "", fmt.Errorf("%w: ttl: negative", errInvalid))
	}
	token, exp, err := a.cfg.DashboardTokens.NewToken(ctx, ttl)
	if err != nil {
		return nil, a.fail(ctx, "dashboard_token", "", err)
	}
	a.log(ctx, "dashboard_token", "expires "+exp.UTC().Format(time.RFC3339), nil)
	return &tallyv1.CreateDashboardTokenResponse{Token: token, ExpiresAt: exp.Unix(), LoginUrl: a.cfg.DashboardTokens.LoginURL(token)}, nil
}
