// Package agent is the node agent's domain: its standing with the server
// (Session: attestation, the agent SVID, the entry stream) and the cache
// that mints, rotates and serves workload SVIDs (Cache, which implements the
// Workload API's source). internal/app/agent wires them into tally-agent.
package agent
