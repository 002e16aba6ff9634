package k8s

import (
	"fmt"

	"github.com/tallyid/tally/attest"
)

// ErrAmbiguous wraps every refusal because the evidence names more than one
// workload: the cgroup lines of a process name more than one pod UID or
// container ID, the pod list has more than one pod with the container, or
// the container belongs to another pod than the cgroup names. It wraps
// attest.ErrAmbiguous, which callers map to FailedPrecondition; it does not
// wrap attest.ErrDenied.
var ErrAmbiguous = fmt.Errorf("k8s: %w", attest.ErrAmbiguous)
