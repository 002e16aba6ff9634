package app

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// The SPIFFE IDs of the demo's workloads. scripts/demo-todos.sh registers
// them with Tally, each for its own executable (a unix:path selector), and
// lists them in the server's exchange policy.
var (
	TodosID     = spiffeid.RequireFromString("spiffe://example.org/todos/todos")
	RemindersID = spiffeid.RequireFromString("spiffe://example.org/todos/reminders")
	SharesID    = spiffeid.RequireFromString("spiffe://example.org/todos/shares")
	DemoID      = spiffeid.RequireFromString("spiffe://example.org/todos/demo")
)

// Scopes of the todos service's routes. The exchange policy grants shares
// these two, and no others.
const (
	ScopeRead  = "todos.read"  // list the todos shared with the user
	ScopeShare = "todos.share" // share one of the user's todos
)
