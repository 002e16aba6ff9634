package ca

import "errors"

// Sentinel errors callers branch on with errors.Is. Every error returned by
// the authority wraps at most one of them; anything else is an internal
// failure (storage, key files, crypto).
var (
	// ErrInvalidConfig: New refused the Config (maps to a startup failure).
	ErrInvalidConfig = errors.New("ca: invalid config")
	// ErrInvalidCSR: a CSR could not be parsed, its signature does not
	// verify, or it asks for something other than the expected identity
	// (maps to InvalidArgument).
	ErrInvalidCSR = errors.New("ca: invalid csr")
	// ErrInvalidParams: signing parameters are malformed: an ID outside the
	// trust domain, a TTL out of range, an unusable public key, a missing
	// audience, a reserved claim (maps to InvalidArgument).
	ErrInvalidParams = errors.New("ca: invalid signing params")
	// ErrNotReady: there is no usable active key, for example because it
	// expired while rotation kept failing (maps to Unavailable).
	ErrNotReady = errors.New("ca: no usable signing key")
)
