package workloadapi

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/peercred"
)

// statuses maps errors to what a workload sees, first match wins. public is
// the status message ("": err.Error(); the cause is then the caller's own
// input or state); level is how loudly the refusal is logged, with its cause.
var statuses = []struct {
	err    error
	code   codes.Code
	public string
	level  slog.Level
}{
	{errMissingHeader, codes.InvalidArgument, "", slog.LevelDebug},
	{errInvalid, codes.InvalidArgument, "", slog.LevelDebug},
	// The process that connected is not the one attestation looked at.
	{peercred.ErrProcessGone, codes.PermissionDenied, "caller process exited or its PID was reused", slog.LevelWarn},
	{peercred.ErrExecuted, codes.PermissionDenied, "caller process executed another program since it connected", slog.LevelWarn},
	{peercred.ErrNotPinned, codes.PermissionDenied, "caller process could not be identified", slog.LevelWarn},
	{context.Canceled, codes.Canceled, "", slog.LevelDebug},
	{context.DeadlineExceeded, codes.DeadlineExceeded, "", slog.LevelDebug},
	{attest.ErrDenied, codes.PermissionDenied, "workload attestation denied", slog.LevelInfo},
	{attest.ErrAmbiguous, codes.FailedPrecondition, "", slog.LevelWarn},
	{errNoIdentity, codes.PermissionDenied, errNoIdentity.Error(), slog.LevelDebug},
	{errNotReady, codes.Unavailable, errNotReady.Error(), slog.LevelInfo},
	{errShuttingDown, codes.Unavailable, errShuttingDown.Error(), slog.LevelDebug},
	{errAttestation, codes.Unavailable, errAttestation.Error(), slog.LevelWarn},
	// Before ErrRateLimited, which it wraps, and errSource.
	{errExchangeLimited, codes.ResourceExhausted, "too many token exchanges for this identity: retry later", slog.LevelDebug},
	// Before errSource, which wraps every Source error. Debug: a flood would
	// flood the log too; the agent counts these in a metric.
	{ErrRateLimited, codes.ResourceExhausted, "too many new JWT-SVIDs for this identity: fresh audiences are rate-limited, retry later (audiences already fetched are still served)", slog.LevelDebug},
	{errSource, codes.Unavailable, errSource.Error(), slog.LevelWarn},
	{errUnimplemented, codes.Unimplemented, "", slog.LevelDebug},
}

// toStatus is the only place where the Workload API chooses a gRPC code: it
// turns a handler's error into a status error and logs it to log (which
// names the method and caller). Unexpected errors become Internal, logged as
// errors and not shown to the caller.
func toStatus(log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	// Only a status error itself (from a stream's Send) passes through; a
	// wrapped one (a Source's failed upstream call) is mapped like any error.
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	for _, s := range statuses {
		if !errors.Is(err, s.err) {
			continue
		}
		msg := s.public
		if msg == "" {
			msg = err.Error()
		}
		log.Log(context.Background(), s.level, "workload api call refused", logkey.Code, s.code.String(), logkey.Error, err)
		return status.Error(s.code, msg)
	}
	log.Error("workload api call failed", logkey.Error, err)
	return status.Error(codes.Internal, "internal error")
}
