package dashboard

import "time"

// Source is what the dashboard shows: the server's records and fleet. Its
// methods are called concurrently.
type Source interface {
	// Overview returns the trust domain as of now. The handler calls it at
	// most once per change (and once per Config.Refresh), whatever the
	// number of viewers, and shares the result; the Overview is not
	// modified after it is returned.
	Overview(now time.Time) Overview
	// Buckets returns the issuance counts per minute from the minute of
	// since on, oldest first; minutes with nothing may be left out.
	Buckets(since time.Time) []Bucket
	// Subscribe returns a channel that receives after anything Overview or
	// Buckets shows has changed (a buffered(1) channel, latest wins: a slow
	// dashboard must never block the server), and a func that ends the
	// subscription.
	Subscribe() (changed <-chan struct{}, cancel func())
}

// Overview is the trust domain at one moment.
type Overview struct {
	TrustDomain string
	// Slots are the CA's signing keys, of both kinds.
	Slots     []Slot
	Agents    []Agent
	Workloads []Workload
	// AtRisk lists what needs an operator, most urgent first; the page
	// shows it before everything else.
	AtRisk []Risk
}

// Slot is one CA signing key.
type Slot struct {
	// Kind is "x509" or "jwt"; Status "prepared", "active" or "old".
	Kind, Status string
	// ID is the hex subject key ID of the CA certificate (x509) or the kid
	// (jwt).
	ID                               string
	NotBefore, NotAfter, ActivatedAt time.Time
	// Tainted: the key signs nothing new, and agents re-mint what it signed.
	Tainted bool
	// AtRisk says why it needs attention; empty when it does not.
	AtRisk []string
}

// Agent is one attested agent.
type Agent struct {
	ID, Node string
	// AttestationType is how the agent attested: join_token, k8s_psat, ...
	AttestationType string
	// Banned: the agent may not renew its SVID or get new ones.
	Banned bool
	// LastReport is when the agent last reported what it serves.
	LastReport time.Time
	// SVIDNotAfter is when the agent's own SVID expires; TokenNotAfter
	// when its projected service-account token does (zero: none).
	SVIDNotAfter, TokenNotAfter time.Time
	// Workloads is how many identities it serves.
	Workloads int
	// AtRisk says why it needs attention; empty when it does not.
	AtRisk []string
}

// Workload is one identity an agent serves.
type Workload struct {
	SPIFFEID, EntryID string
	// AgentID and Node are the agent that serves it and its node.
	AgentID, Node string
	// Namespace and Pod, where known (Kubernetes workloads).
	Namespace, Pod string
	// Serial is the current X509-SVID's serial (hex); SignerID the slot ID
	// of the CA key that signed it.
	Serial, SignerID    string
	NotBefore, NotAfter time.Time
	// Renewals counts the renewals of this identity since its first
	// issuance; Subscribers the Workload API streams open for it.
	Renewals, Subscribers int
	// LastError is the last renewal error, empty after a success.
	LastError string
	// AtRisk says why it needs attention; empty when it does not.
	AtRisk []string
}

// Risk is one thing that needs an operator.
type Risk struct {
	// Kind is what Subject names: "svid" (a SPIFFE ID), "agent" (an agent
	// ID) or "slot" (a CA key's slot ID).
	Kind, Subject, Reason string
	// Since is when it became at risk (zero: unknown).
	Since time.Time
}

// Bucket counts the issuances of one minute.
type Bucket struct {
	Minute time.Time
	// First counts first issuances, Renewals renewals, Failures issuances
	// and renewals that failed.
	First, Renewals, Failures int
}
