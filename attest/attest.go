// Package attest answers "who are you" on both sides: node attestation (the
// server verifying an agent) and, from the agent, workload attestation. It
// imports nothing of the rest of Tally; what an attestor needs from the
// server (the store of join tokens, the Kubernetes API) it declares itself.
package attest

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrDenied wraps every refusal of an attestation: bad, unknown, expired or
// reused credentials. Callers map it to PermissionDenied.
var ErrDenied = errors.New("attest: denied")

// ErrAmbiguous: the caller's process shows more than one pod or container,
// so no single identity can be told. Callers map it to FailedPrecondition.
var ErrAmbiguous = errors.New("attest: ambiguous workload")

// Process is a workload process that called the agent, as the agent saw it
// when it accepted the connection.
type Process struct {
	// PID is the process ID in the agent's PID namespace.
	PID int32
	// Exe is the path of the program the process ran when it connected, as
	// /proc/<pid>/exe showed it then; "" if it could not be read. Whoever
	// passes a Process checks that the process still runs that program
	// (peercred.Pin.Alive): an attestor derives the executable from Exe and
	// never reads it again, so what it describes is what connected.
	Exe string
}

// Selector is "type:value" describing a node or workload.
type Selector struct {
	Type  string
	Value string
}

// NodeResult is who an agent turned out to be.
type NodeResult struct {
	// AgentID is the SPIFFE ID the agent's SVID carries.
	AgentID spiffeid.ID
	// Selectors describe the node (for node-alias entries).
	Selectors []Selector
	// Aliases are further IDs that entries may name as parent for this agent.
	Aliases []string
	// CanReattest: the agent may attest again with a fresh credential of the
	// same kind (PSAT) rather than only once (join token).
	CanReattest bool
}

// NodeAttestor verifies one kind of agent credential on the server.
type NodeAttestor interface {
	// Attest verifies data and returns the agent's identity, or an error
	// wrapping ErrDenied.
	Attest(ctx context.Context, data []byte) (NodeResult, error)
}
