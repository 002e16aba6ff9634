package workloadapi

import "errors"

// Errors the handlers return; toStatus maps them to gRPC codes.
var (
	errMissingHeader = errors.New("security header missing from request")
	errInvalid       = errors.New("invalid request")
	errNoIdentity    = errors.New("no identity issued")
	errNotReady      = errors.New("trust bundle not available yet")
	errShuttingDown  = errors.New("workload api shutting down")
	errAttestation   = errors.New("workload attestation failed")
	errSource        = errors.New("identities unavailable")
	errUnimplemented = errors.New("not implemented by this agent")
)
