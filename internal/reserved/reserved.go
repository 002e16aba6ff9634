// Package reserved is the SPIFFE ID layout Tally keeps for itself: every ID
// whose path starts with /tally/ in a trust domain. The server is
// /tally/server; agents are /tally/agent/<attestation type>/<...>. No
// registration entry may name a reserved ID.
package reserved

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	prefix        = "/tally/"
	serverPath    = prefix + "server"
	dashboardPath = prefix + "dashboard"
	agentPrefix   = prefix + "agent/"
)

// ServerID is the SPIFFE ID of the Tally server of td. Entries parented to
// it with node selectors are node aliases.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, serverPath)
}

// DashboardID is the subject of the dashboard's bearer tokens: JWT-SVIDs
// only the server signs, for no workload.
func DashboardID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, dashboardPath)
}

// AgentID is the ID of an agent attested by attestationType, told apart by
// the segments (a token ID; a cluster and a node UID). It fails if a
// segment is not a valid path segment.
func AgentID(td spiffeid.TrustDomain, attestationType string, segments ...string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, append([]string{"tally", "agent", attestationType}, segments...)...)
}

// IsReserved reports whether id is in Tally's own part of its trust domain.
func IsReserved(id spiffeid.ID) bool { return strings.HasPrefix(id.Path(), prefix) }

// Prefix is the start of every reserved ID of td as a string
// ("spiffe://<td>/tally/"), for checks on IDs kept as strings.
func Prefix(td spiffeid.TrustDomain) string { return td.ID().String() + prefix }

// IsAgent reports whether id names an agent.
func IsAgent(id spiffeid.ID) bool { return strings.HasPrefix(id.Path(), agentPrefix) }
