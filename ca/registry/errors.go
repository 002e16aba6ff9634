package registry

import "errors"

var (
	// ErrInvalid wraps every validation failure of an entry or selector.
	ErrInvalid = errors.New("registry: invalid")
	// ErrNotAuthorized: the agent may not issue the entry.
	ErrNotAuthorized = errors.New("registry: entry not authorized for agent")
)
