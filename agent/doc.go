// Package agent is the node agent's domain: its standing with the server
// (Session: attestation, the agent SVID, the entry stream and the tainted
// keys it names), the cache that mints, rotates and serves workload SVIDs
// (Cache, which implements the Workload API's source), what it tells the
// server it serves (Reporter) and when its attestation token expires
// (TokenExpiry). internal/app/agent wires them into tally-agent.
package agent
