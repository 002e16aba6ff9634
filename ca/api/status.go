package api

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/logkey"
)

// errPermission marks refusals decided by this package (unknown or banned
// agent, non-admin caller).
var errPermission = errors.New("permission denied")

// toStatus maps a domain error to a gRPC status. It is the only place codes
// are chosen; internal causes are logged and not sent to the caller.
func toStatus(log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, registry.ErrInvalid), errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrInvalidParams), errors.Is(err, errInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, registry.ErrOwned):
		code = codes.FailedPrecondition
	case errors.Is(err, attest.ErrDenied), errors.Is(err, registry.ErrNotAuthorized), errors.Is(err, errPermission):
		code = codes.PermissionDenied
	case errors.Is(err, errUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, ca.ErrNotReady), errors.Is(err, ca.ErrUpstream), errors.Is(err, errShuttingDown):
		code = codes.Unavailable
	case errors.Is(err, errBusy):
		code = codes.ResourceExhausted
	}
	if code == codes.Internal {
		log.Error("request failed", logkey.Method, method, logkey.Error, err)
		return status.Error(code, "internal error")
	}
	log.Debug("request refused", logkey.Method, method, logkey.Code, code.String(), logkey.Error, err)
	return status.Error(code, err.Error())
}

var (
	errInvalid         = errors.New("invalid request")
	errUnauthenticated = errors.New("unauthenticated")
	errShuttingDown    = errors.New("server shutting down; reconnect")
)

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
