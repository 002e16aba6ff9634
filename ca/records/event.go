// Package records keeps what the server issued and what happened to its
// trust domain — every SVID issuance, agent attestation and CA rotation — in
// bounded memory: a ring of recent events and time-bucketed aggregates, for
// the dashboard and `tallyctl svid history`.
//
// Nothing is written to disk: the history starts afresh when the server
// starts. Memory is bounded by Config.Size events, Config.MaxIdentities
// entries of the last-issuance index and Config.Minutes per-minute buckets,
// whatever the rate of Record.
package records

import "time"

// Kind says what an Event records.
type Kind string

const (
	KindX509        Kind = "x509"        // an X509-SVID issued
	KindJWT         Kind = "jwt"         // a JWT-SVID issued
	KindAttestation Kind = "attestation" // an agent attested (Detail: how, or why it was refused)
	KindRotation    Kind = "rotation"    // a CA slot changed (Detail: what)
)

// Event is one recorded event.
type Event struct {
	Kind     Kind
	SPIFFEID string
	Serial   string // hex, X509-SVIDs only
	AgentID  string // the agent it was issued through; empty for the Admin API
	EntryID  string // the registration entry it was issued for; empty for the Admin API
	// At is when it happened; Record sets it from its clock when zero.
	At time.Time
	// NotBefore and NotAfter bound the SVID's validity (or a CA slot's),
	// kept to the second.
	NotBefore, NotAfter time.Time
	KeyID               string // the signing key's slot ID
	Renewal             bool   // a renewal rather than a first issuance (attestation: a re-attestation)
	Failed              bool   // an issuance, attestation or rotation that failed
	Detail              string
}

// Identity is what the last-issuance index is keyed by: one kind of SVID
// issued through one agent for one entry and SPIFFE ID. Admin API mints have
// neither agent nor entry, and share one identity per kind and SPIFFE ID.
type Identity struct {
	Kind     Kind
	AgentID  string
	EntryID  string
	SPIFFEID string
}

// Identity returns the identity e is an issuance of.
func (e Event) Identity() Identity {
	return Identity{Kind: e.Kind, AgentID: e.AgentID, EntryID: e.EntryID, SPIFFEID: e.SPIFFEID}
}

// IsIssuance reports whether e is an SVID issued (successfully or not).
func (e Event) IsIssuance() bool { return e.Kind == KindX509 || e.Kind == KindJWT }
