// Package logkey names the keys of Tally's log lines, once for every
// package, so that one thing has one name in every line that mentions it
// (a SPIFFE ID is always spiffe_id, an expiry always not_after).
package logkey

const (
	// Error is the error that a line reports.
	Error = "error"
	// Component names the part of a binary that logs (ca, registry,
	// node-api, cache, ...).
	Component = "component"
	// SPIFFEID is a SPIFFE ID; TrustDomain a trust domain name.
	SPIFFEID    = "spiffe_id"
	TrustDomain = "trust_domain"
	// NotAfter is when a certificate, key or token expires.
	NotAfter = "not_after"
	// RetryIn is how long until a failed step is tried again.
	RetryIn = "retry_in"
	// Revision is an entry revision; Sequence a bundle sequence number.
	Revision = "revision"
	Sequence = "sequence"
	// Socket is a Unix socket path; Path any other file path; URL a URL.
	Socket = "socket"
	Path   = "path"
	URL    = "url"
	// Peer is a network peer's address.
	Peer = "peer"
	// PID, UID identify a workload process; Pin how it is pinned.
	PID = "pid"
	UID = "uid"
	Pin = "pin"
	// Method is an API method; Code the gRPC code it answered.
	Method = "method"
	Code   = "code"
	// Selectors are a workload's or node's selectors.
	Selectors = "selectors"
	// EntryID identifies a registration entry; Field one of its fields; Text
	// the (escaped) text refused in it; Hint an entry's hint.
	EntryID = "entry_id"
	Field   = "field"
	Text    = "text"
	Hint    = "hint"
	// Kind and ID identify a CA key slot; Subject a certificate's subject.
	Kind    = "kind"
	ID      = "id"
	Subject = "subject"
	// Node, PodUID, ContainerID and Pods describe Kubernetes workloads.
	Node        = "node"
	PodUID      = "pod_uid"
	ContainerID = "container_id"
	Pods        = "pods"
	// Actor, UserIssuer, UserSubject, Audience, Scope, Txn, Authn, Rule and
	// Result describe a token exchange (never the tokens themselves).
	Actor       = "actor"
	UserIssuer  = "user_iss"
	UserSubject = "user_sub"
	Audience    = "audience"
	Scope       = "scope"
	Txn         = "txn"
	Authn       = "authn"
	Rule        = "rule"
	Result      = "result"

	// Cluster, Key, Lease and Count describe the Kubernetes registrar: its
	// cluster name, a queue key (pod/<uid>, static/<name>), its Lease, and
	// how many entries.
	Cluster = "cluster"
	Key     = "key"
	Lease   = "lease"
	Count   = "count"
	// ConfigMap is "namespace/name" of a ConfigMap the server writes.
	ConfigMap = "configmap"
)
