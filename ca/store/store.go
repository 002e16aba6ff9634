// Package store defines the server's persistent state: registration entries
// with their event log, attested agents, join tokens, the CA journal and the
// trust bundle. Implementations (badger now, PostgreSQL later) must make every
// acknowledged write durable and every method safe for concurrent use.
package store

import (
	"context"
	"time"
)

// Store is the server's persistent state. Every mutating method is one
// transaction: it either applies completely or not at all.
type Store interface {
	// CreateEntries inserts all entries or none. IDs must be set by the caller
	// and unique; an entry equal to an existing one in spiffe_id, parent_id and
	// selectors fails the batch with ErrAlreadyExists. Each entry gets the
	// revision of its event; the returned entries carry it.
	//
	// Equal means the same selector set, in any order and regardless of
	// repeats. A stored or repeated ID, or an entry equal to a stored or
	// earlier one of the same batch, fails with ErrAlreadyExists; the error
	// names the entry. CreatedAt is kept as given.
	CreateEntries(ctx context.Context, entries []Entry) ([]Entry, error)
	// UpdateEntry replaces the entry with e.ID (ErrNotFound if absent). It
	// keeps the stored CreatedAt, fails with ErrAlreadyExists if e would equal
	// another entry, and records the old entry as the event's Previous.
	UpdateEntry(ctx context.Context, e Entry) (Entry, error)
	// DeleteEntries deletes all entries or none (ErrNotFound if one is absent).
	DeleteEntries(ctx context.Context, ids []string) error
	// WriteEntries applies w's deletions, then its updates, then its
	// creations in one transaction, all or none, with the rules of the three
	// methods above; each step sees the earlier ones. It returns the updated
	// and created entries as stored.
	WriteEntries(ctx context.Context, w EntryWrites) (EntryWrites, error)
	// GetEntry returns the entry or ErrNotFound.
	GetEntry(ctx context.Context, id string) (Entry, error)
	// ListEntries returns entries matching the filter ordered by ID, at most
	// Limit (0: all), starting after AfterID. A selector filter matches the
	// entries that have all of the given selectors.
	ListEntries(ctx context.Context, f EntryFilter) ([]Entry, error)
	// Revision is the revision of the newest event.
	Revision(ctx context.Context) (uint64, error)
	// Events returns events with revision > after, oldest first, at most limit
	// (0: all). Revisions are consecutive (no gaps) and become visible in
	// order, so asking again after the last one seen misses nothing.
	// ErrCompacted if events after `after` are no longer kept.
	Events(ctx context.Context, after uint64, limit int) ([]Event, error)
	// PruneEvents drops events with revision < before (the newest is kept).
	PruneEvents(ctx context.Context, before uint64) error

	// PutAgent creates or replaces an agent.
	PutAgent(ctx context.Context, a Agent) error
	// GetAgent returns the agent or ErrNotFound.
	GetAgent(ctx context.Context, id string) (Agent, error)
	ListAgents(ctx context.Context) ([]Agent, error)
	// DeleteAgent removes the agent (ErrNotFound if absent).
	DeleteAgent(ctx context.Context, id string) error

	// CreateJoinToken stores a new token (ErrAlreadyExists if it is stored).
	CreateJoinToken(ctx context.Context, t JoinToken) error
	// ConsumeJoinToken deletes and returns the token. Of concurrent callers
	// exactly one succeeds; the others get ErrNotFound. An expired token is
	// deleted and ErrExpired returned. A token is expired from ExpiresAt on.
	ConsumeJoinToken(ctx context.Context, token string, now time.Time) (JoinToken, error)
	// PruneJoinTokens deletes tokens expired at now (ExpiresAt <= now) and
	// returns how many.
	PruneJoinTokens(ctx context.Context, now time.Time) (int, error)

	// LoadJournal returns the CA journal, or ErrNotFound on a new store.
	LoadJournal(ctx context.Context) ([]byte, error)
	// SaveJournal replaces the CA journal.
	SaveJournal(ctx context.Context, journal []byte) error
	// LoadBundle returns the stored trust bundle (SPIFFE JSON) or ErrNotFound.
	LoadBundle(ctx context.Context) ([]byte, error)
	// SaveBundle replaces the stored trust bundle.
	SaveBundle(ctx context.Context, bundle []byte) error

	// Close releases the store.
	Close() error
}

// Selector is "type:value", for example unix:uid:1000 is {unix, uid:1000}.
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Entry is a registration entry.
type Entry struct {
	ID        string        `json:"id"`
	SPIFFEID  string        `json:"spiffe_id"`
	ParentID  string        `json:"parent_id"`
	Selectors []Selector    `json:"selectors"`
	X509TTL   time.Duration `json:"x509_ttl,omitempty"`
	JWTTTL    time.Duration `json:"jwt_ttl,omitempty"`
	DNSNames  []string      `json:"dns_names,omitempty"`
	Hint      string        `json:"hint,omitempty"`
	Admin     bool          `json:"admin,omitempty"`
	// Owner is set on the entries the Kubernetes registrar keeps; nil on
	// entries made by hand. The registrar writes only entries it owns.
	Owner     *Owner    `json:"owner,omitempty"`
	Revision  uint64    `json:"revision"`
	CreatedAt time.Time `json:"created_at"`
}

// Owner says which registrar keeps an entry and what it renders it from.
type Owner struct {
	// Cluster is the registrar's cluster name: several clusters can share
	// one server, each keeping only its own entries.
	Cluster string `json:"cluster"`
	// Kind and Name are the resource the entry is rendered from
	// (ClusterIdentity or ClusterStaticEntry).
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Pod is "namespace/name" of the pod the entry is for, and PodUID its
	// UID; empty for a ClusterStaticEntry.
	Pod    string `json:"pod,omitempty"`
	PodUID string `json:"pod_uid,omitempty"`
}

// EntryWrites is a change of several entries made at once.
type EntryWrites struct {
	Delete []string
	Update []Entry
	Create []Entry
}

// EntryFilter narrows ListEntries; zero fields match everything.
type EntryFilter struct {
	SPIFFEID  string
	ParentID  string
	Selectors []Selector // entries having all of these
	AfterID   string
	Limit     int
}

// EventType says what happened to an entry.
type EventType string

const (
	EventCreated EventType = "created"
	EventUpdated EventType = "updated"
	EventDeleted EventType = "deleted"
)

// Event is one change of the entry set. Entry is the entry after the change
// (for deletions, as it was when deleted).
type Event struct {
	Revision uint64    `json:"revision"`
	Type     EventType `json:"type"`
	Entry    Entry     `json:"entry"`
	// Previous is the entry before an update.
	Previous *Entry `json:"previous,omitempty"`
}

// Agent is an attested node agent.
type Agent struct {
	ID              string     `json:"id"`
	AttestationType string     `json:"attestation_type"`
	SerialNumber    string     `json:"serial_number"`
	PrevSerial      string     `json:"prev_serial,omitempty"`
	ExpiresAt       time.Time  `json:"expires_at"`
	Selectors       []Selector `json:"selectors,omitempty"`
	Aliases         []string   `json:"aliases,omitempty"`
	Banned          bool       `json:"banned,omitempty"`
	AttestedAt      time.Time  `json:"attested_at"`
	RenewedAt       time.Time  `json:"renewed_at"`
}

// JoinToken is a single-use agent attestation secret.
type JoinToken struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// Alias, if set, becomes an alias of the agent that uses the token.
	Alias string `json:"alias,omitempty"`
}
