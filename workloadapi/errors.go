package workloadapi

import "errors"

// ErrRateLimited is what a Source wraps when it refuses a request because
// the caller asked for too much too fast (fresh JWT-SVIDs, say); the
// workload gets ResourceExhausted and can retry later.
var ErrRateLimited = errors.New("rate limit exceeded")

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
	// errExchangeLimited wraps an ErrRateLimited refusal of a token exchange.
	errExchangeLimited = errors.New("too many token exchanges for this identity")
)
