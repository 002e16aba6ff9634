package store

import "errors"

var (
	// ErrNotFound: the entry, agent, token or record does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrAlreadyExists: an ID or an equal entry is already stored.
	ErrAlreadyExists = errors.New("store: already exists")
	// ErrExpired: the join token expired.
	ErrExpired = errors.New("store: expired")
	// ErrCompacted: events after the requested revision were pruned.
	ErrCompacted = errors.New("store: revision compacted")
)
