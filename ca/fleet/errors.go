package fleet

import "errors"

// ErrInvalid marks a report refused for what it holds (too many SVIDs for
// one agent, a missing entry ID, a field too long). The Node API maps it to
// InvalidArgument.
var ErrInvalid = errors.New("fleet: invalid report")
