package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/ca/fleet"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// maxReportSVIDs bounds the identities (and, apart, the removed entry IDs)
// of one ReportSVIDs call.
const maxReportSVIDs = 10_000

// errReportsOff is ReportSVIDs on a server whose NodeConfig has no Fleet.
var errReportsOff = errors.New("svid reports are not collected on this server")

// ReportSVIDs takes the calling agent's report of what it serves and hands
// it to the Fleet: authenticated as every Node call (authAgent), at most
// 10,000 identities and 10,000 removed entry IDs (InvalidArgument beyond, or
// when the Fleet refuses the report with fleet.ErrInvalid). Without a Fleet
// the call is Unimplemented, after authentication. Reports are not audited:
// they change nothing the server issues.
func (n *Node) ReportSVIDs(ctx context.Context, req *tallyv1.ReportSVIDsRequest) (*tallyv1.ReportSVIDsResponse, error) {
	agent, err := n.authAgent(ctx)
	if err != nil {
		return nil, toStatus(n.cfg.Logger, "ReportSVIDs", err)
	}
	if n.cfg.Fleet == nil {
		return nil, status.Error(codes.Unimplemented, errReportsOff.Error())
	}
	if k, r := len(req.GetSvids()), len(req.GetRemovedEntryIds()); k > maxReportSVIDs || r > maxReportSVIDs {
		return nil, toStatus(n.cfg.Logger, "ReportSVIDs", fmt.Errorf("%w: %d svids and %d removed entry IDs in one report, at most %d each", errInvalid, k, r, maxReportSVIDs))
	}
	if err := n.cfg.Fleet.Report(ctx, agent.ID, req); err != nil {
		if errors.Is(err, fleet.ErrInvalid) {
			err = fmt.Errorf("%w: %w", errInvalid, err)
		}
		return nil, toStatus(n.cfg.Logger, "ReportSVIDs", err)
	}
	return &tallyv1.ReportSVIDsResponse{}, nil
}
