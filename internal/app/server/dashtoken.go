package serverapp

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/ca"
)

// dashboardAudience is the aud of dashboard tokens: no workload asks for it.
const dashboardAudience = "tally-dashboard"

// jwtSigner signs JWT-SVIDs and publishes the bundle that verifies them.
type jwtSigner interface {
	SignJWTSVID(ctx context.Context, p ca.JWTSVIDParams) (string, time.Time, error)
	Bundle() *spiffebundle.Bundle
}

// dashboardTokens signs and verifies the dashboard's bearer tokens:
// JWT-SVIDs of the reserved ID spiffe://<td>/tally/dashboard for the
// audience tally-dashboard, signed by the trust domain's JWT key, so they
// verify against the current bundle and stop working with a revoked key.
type dashboardTokens struct {
	signer jwtSigner
	id     spiffeid.ID
}

func (d dashboardTokens) NewToken(ctx context.Context, ttl time.Duration) (string, time.Time, error) {
	return d.signer.SignJWTSVID(ctx, ca.JWTSVIDParams{ID: d.id, Audience: []string{dashboardAudience}, TTL: ttl})
}
