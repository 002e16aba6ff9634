package api

import (
	"context"
	"time"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/records"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Rotation is the CA's rotation by hand, for the Admin API: the
// *ca.Authority.
type Rotation interface {
	Slots() []ca.SlotInfo
	Prepare(ctx context.Context, kind ca.Kind) (ca.SlotInfo, error)
	Activate(ctx context.Context, kind ca.Kind, id string) (ca.SlotInfo, error)
	Taint(ctx context.Context, kind ca.Kind, id string) (ca.SlotInfo, error)
	Revoke(ctx context.Context, kind ca.Kind, id string, force bool) (ca.SlotInfo, error)
}

// Recorder records issuances and events and lists them, newest first.
type Recorder interface {
	Record(e records.Event)
	List(spiffeID string, limit int) []records.Event
}

// Fleet keeps what each agent reports it serves.
type Fleet interface {
	Report(ctx context.Context, agentID string, r *tallyv1.ReportSVIDsRequest) error
}

// DashboardTokens signs the dashboard's short-lived bearer tokens (ttl 0:
// the default) and names the URL that opens the dashboard with one.
type DashboardTokens interface {
	NewToken(ctx context.Context, ttl time.Duration) (token string, expiresAt time.Time, err error)
	LoginURL(token string) string
}
