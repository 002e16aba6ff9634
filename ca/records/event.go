// Package records keeps what the server issued and what happened to its
// trust domain — every SVID issuance, agent attestation and CA rotation — in
// bounded memory: a ring of recent events and time-bucketed aggregates, for
// the dashboard and `tallyctl svid history`.
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
	At       time.Time
	// NotBefore and NotAfter bound the SVID's validity.
	NotBefore, NotAfter time.Time
	KeyID               string // the signing key's slot ID
	Renewal             bool   // a renewal rather than a first issuance
	Failed              bool   // an issuance or rotation that failed
	Detail              string
}
