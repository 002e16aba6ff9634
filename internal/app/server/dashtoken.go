package serverapp

import (
	"context"
	"fmt"
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
	maxTTL time.Duration // ca_ttl/6: no JWT-SVID lives longer
	web    string        // the dashboard's https://host:port
}

// defaultDashboardTTL is how long a dashboard token lives unless asked.
const defaultDashboardTTL = time.Hour

// NewToken signs a token for ttl: 0 means min(1h, ca_ttl/6).
func (d dashboardTokens) NewToken(ctx context.Context, ttl time.Duration) (string, time.Time, error) {
	switch {
	case ttl == 0:
		ttl = min(defaultDashboardTTL, d.maxTTL)
	case ttl > d.maxTTL:
		return "", time.Time{}, fmt.Errorf("%w: ttl %s exceeds the longest a token may live on this server, %s (ca_ttl/6)", ca.ErrInvalidParams, ttl, d.maxTTL)
	}
	return d.signer.SignJWTSVID(ctx, ca.JWTSVIDParams{ID: d.id, Audience: []string{dashboardAudience}, TTL: ttl})
}

// LoginURL opens the dashboard with token, in the fragment: browsers never
// send it to the server, and the page swaps it for a session cookie.
func (d dashboardTokens) LoginURL(token string) string {
	return d.web + "/dashboard/login#token=" + token
}
