package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/metadata"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/peercred"
)

// headerKey is the metadata every Workload API request must carry with the
// value "true", so that a workload cannot be tricked into calling the agent
// through a server-side request forgery.
const headerKey = "workload.spiffe.io"

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(headerKey); len(v) != 1 || v[0] != "true" {
		return errMissingHeader
	}
	return nil
}

// caller is an attested workload process.
type caller struct {
	pin       *peercred.Pin
	selectors []attest.Selector
}

// attest identifies the caller of ctx: the peer credentials of its
// connection, the Attestor's selectors for its PID, and then a check that
// the PID still names the process that connected, running the program it
// ran then (the pin); otherwise the selectors could describe a process that
// took the PID over (the error wraps peercred.ErrProcessGone) or a program
// the process executed after connecting (peercred.ErrExecuted). log is log with the caller's PID.
func (s *Server) attest(ctx context.Context, log *slog.Logger) (caller, *slog.Logger, error) {
	info, err := peercred.FromContext(ctx)
	if err != nil {
		return caller{}, log, fmt.Errorf("workloadapi: %w", err)
	}
	log = log.With(logkey.PID, info.PID, logkey.UID, info.UID)
	if info.Pin == nil {
		return caller{}, log, fmt.Errorf("%w: no pin", peercred.ErrNotPinned)
	}
	log = log.With(logkey.Pin, info.Pin.Method())
	// Refuse early a caller that is already gone.
	if err := info.Pin.Alive(); err != nil {
		s.cfg.Metrics.attested(attestProcessGone)
		return caller{}, log, err
	}
	sels, aerr := s.cfg.Attestor.Attest(ctx, attest.Process{PID: info.PID, Exe: info.Pin.Exe()})
	// What the attestor read is about the caller only if the PID still
	// names the process that connected.
	if err := info.Pin.Alive(); err != nil {
		s.cfg.Metrics.attested(attestProcessGone)
		return caller{}, log, err
	}
	switch {
	case errors.Is(aerr, attest.ErrDenied):
		s.cfg.Metrics.attested(attestDenied)
		return caller{}, log, aerr
	case aerr != nil:
		s.cfg.Metrics.attested(attestError)
		return caller{}, log, fmt.Errorf("%w: %w", errAttestation, aerr)
	case len(sels) == 0:
		s.cfg.Metrics.attested(attestDenied)
		return caller{}, log, fmt.Errorf("%w: no selectors for pid %d", attest.ErrDenied, info.PID)
	}
	s.cfg.Metrics.attested(attestOK)
	log.Debug("workload attested", logkey.Selectors, sels)
	return caller{pin: info.Pin, selectors: sels}, log, nil
}
