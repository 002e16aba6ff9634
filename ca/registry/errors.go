package registry

import "errors"

var (
	// ErrInvalid wraps every validation failure of an entry or selector.
	ErrInvalid = errors.New("registry: invalid")
	// ErrNotAuthorized: the agent may not issue the entry.
	ErrNotAuthorized = errors.New("registry: entry not authorized for agent")
	// ErrOwned: a hand edit, without force, of an entry the Kubernetes
	// registrar keeps.
	ErrOwned = errors.New("registry: entry is kept by the Kubernetes registrar")
)
