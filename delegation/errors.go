package delegation

import "errors"

// Sentinel errors of verification, for errors.Is. Every other refusal is a
// plain wrapped error: callers only need to know that the token is not good.
var (
	// ErrTooLarge: the token is longer than MaxTokenSize bytes and was not
	// parsed.
	ErrTooLarge = errors.New("token too large")

	// ErrNotDelegated: the token is validly signed but carries no user: it
	// lacks usr, txn or act. A plain JWT-SVID, in which a workload acts for
	// itself, fails with this error.
	ErrNotDelegated = errors.New("token is not delegated")

	// ErrActorChain: the act claim is malformed, deeper than MaxActors, holds
	// an actor that is not a SPIFFE ID, or its outermost actor is not the
	// workload that sent the token.
	ErrActorChain = errors.New("invalid actor chain")

	// ErrWrongSender: a JWT-SVID came over mutual TLS from a workload other
	// than its sub: it was replayed.
	ErrWrongSender = errors.New("token sent by another workload than its subject")
)
