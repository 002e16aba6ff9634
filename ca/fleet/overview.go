package fleet

import "time"

// Overview is the trust domain as the dashboard shows it: the CA slots, the
// agents and what each serves, and what is at risk. Every list is sorted
// with what is at risk first. It is a copy: the caller may keep it.
type Overview struct {
	TrustDomain string     `json:"trust_domain"`
	At          time.Time  `json:"at"`
	Slots       []Slot     `json:"slots"`
	Agents      []Agent    `json:"agents"`
	Workloads   []Workload `json:"workloads"`
	AtRisk      []Risk     `json:"at_risk"`
	Totals      RiskCounts `json:"totals"`
}

// RiskCounts counts what the overview holds and how much of it is at risk.
type RiskCounts struct {
	Agents          int `json:"agents"`
	AgentsAtRisk    int `json:"agents_at_risk"`
	Workloads       int `json:"workloads"`
	WorkloadsAtRisk int `json:"workloads_at_risk"`
}

// Slot is one CA signing key.
type Slot struct {
	Kind        string    `json:"kind"` // x509 or jwt
	ID          string    `json:"id"`
	Status      string    `json:"status"` // prepared, active or old
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	Tainted     bool      `json:"tainted,omitempty"`
	AtRisk      []string  `json:"at_risk,omitempty"`
}

// Agent is one attested agent, with what it last reported.
type Agent struct {
	ID              string `json:"id"`
	Node            string `json:"node,omitempty"` // the Kubernetes node (k8s_psat agents)
	AttestationType string `json:"attestation_type"`
	Banned          bool   `json:"banned,omitempty"`
	// LastReport is zero if it has not reported since the server started.
	LastReport time.Time `json:"last_report,omitzero"`
	// SVIDNotAfter is when its SVID expires (as it reported, else as issued);
	// TokenNotAfter when its projected service-account token does (zero:
	// none reported).
	SVIDNotAfter  time.Time `json:"svid_not_after,omitzero"`
	TokenNotAfter time.Time `json:"token_not_after,omitzero"`
	// LastRotation is the NotBefore of the newest SVID it has reported.
	LastRotation time.Time `json:"last_rotation,omitzero"`
	Workloads    int       `json:"workloads"`
	AtRisk       []string  `json:"at_risk,omitempty"`
}

// Workload is one identity an agent serves, as it last reported.
type Workload struct {
	EntryID  string `json:"entry_id"`
	SPIFFEID string `json:"spiffe_id"`
	AgentID  string `json:"agent_id"`
	Node     string `json:"node,omitempty"`
	// Namespace and Pod, when the entry's k8s:ns: and k8s:pod-name:
	// selectors (or, for the namespace, an /ns/<ns>/ SPIFFE ID path) tell.
	Namespace   string    `json:"namespace,omitempty"`
	Pod         string    `json:"pod,omitempty"`
	Serial      string    `json:"serial"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	Subscribers int       `json:"subscribers"`
	LastError   string    `json:"last_error,omitempty"`
	SignerID    string    `json:"signer_id,omitempty"`
	// Renewals counts the serial changes the server saw for it.
	Renewals int      `json:"renewals"`
	AtRisk   []string `json:"at_risk,omitempty"`
}

// RiskKind says what is at risk and why.
type RiskKind string

const (
	// RiskSVIDExpiring: an SVID past 3/4 of its lifetime, not renewed.
	RiskSVIDExpiring RiskKind = "svid_expiring"
	// RiskSVIDExpired: an SVID an agent still serves after it expired.
	RiskSVIDExpired RiskKind = "svid_expired"
	// RiskTaintedSigner: an SVID signed by a tainted CA key.
	RiskTaintedSigner RiskKind = "tainted_signer"
	// RiskAgentStale: an agent that has not reported for Config.StaleAfter.
	RiskAgentStale RiskKind = "agent_stale"
	// RiskAgentSVIDExpiring: an agent's SVID in its last quarter, or expired.
	RiskAgentSVIDExpiring RiskKind = "agent_svid_expiring"
	// RiskAgentTokenExpiring: an agent's service-account token within
	// Config.TokenWarning of its expiry, or expired.
	RiskAgentTokenExpiring RiskKind = "agent_token_expiring"
	// RiskSlotNoSuccessor: an active CA slot in its last quarter with no
	// prepared successor.
	RiskSlotNoSuccessor RiskKind = "slot_no_successor"
)

// Subject says what a risk of kind k is about: "svid", "agent" or "slot".
func (k RiskKind) Subject() string {
	switch k {
	case RiskAgentStale, RiskAgentSVIDExpiring, RiskAgentTokenExpiring:
		return "agent"
	case RiskSlotNoSuccessor:
		return "slot"
	}
	return "svid"
}

// Risk is one thing at risk.
type Risk struct {
	Kind RiskKind `json:"kind"`
	// Subject is the SPIFFE ID of the workload or agent, or "<kind> slot <id>".
	Subject string `json:"subject"`
	// AgentID and EntryID name a workload's agent and entry.
	AgentID string `json:"agent_id,omitempty"`
	EntryID string `json:"entry_id,omitempty"`
	Reason  string `json:"reason"`
	// Since is when it became at risk (for a tainted signer: when the key
	// was tainted).
	Since time.Time `json:"since"`
}
