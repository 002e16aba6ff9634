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
	// ErrNotFound: no live key slot of that kind has the ID given to a
	// rotation step (maps to NotFound).
	ErrNotFound = errors.New("ca: no such key")
	// ErrConflict: a rotation step by hand is refused in the key's current
	// state: activating a key that is not prepared or was published too
	// recently, preparing a second key, tainting or revoking the active key,
	// revoking a key whose SVIDs may be unexpired (maps to
	// FailedPrecondition).
	ErrConflict = errors.New("ca: refused in the key's current state")
	// ErrUpstream: the upstream CA could not sign (down, unreachable, or it
	// refused); the current keys keep signing.
	ErrUpstream = errors.New("ca: upstream CA unavailable")
)
