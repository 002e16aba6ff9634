package records

import (
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/notify"
)

// Defaults of Config.
const (
	DefaultSize          = 100_000
	DefaultMaxIdentities = 100_000
	DefaultMinutes       = 24 * 60
)

// Config configures a Recorder. Zero fields take the defaults.
type Config struct {
	// Size is how many events the ring keeps (DefaultSize): the oldest is
	// dropped for each new one beyond. About 72 bytes an event, plus each
	// distinct string once.
	Size int
	// MaxIdentities bounds the last-issuance index (DefaultMaxIdentities):
	// beyond it, the identity issued least recently is forgotten.
	MaxIdentities int
	// Minutes is how many per-minute buckets are kept (DefaultMinutes, 24h).
	Minutes int
	Clock   clock.PassiveClock
}

// Recorder keeps the latest Config.Size events in a ring, per-minute counts
// of the last Config.Minutes minutes, lifetime totals, and the latest
// successful issuance of each Identity. All methods are safe for concurrent
// use; Record never blocks on a subscriber.
type Recorder struct {
	clock clock.PassiveClock

	mu     sync.Mutex
	in     *interner
	ring   []packed
	next   int // where the next event goes
	n      int // events held
	index  *lru
	bucket *buckets
	totals [numKinds]counts

	notify notify.Hub
}

// New returns an empty Recorder.
func New(cfg Config) *Recorder {
	if cfg.Size <= 0 {
		cfg.Size = DefaultSize
	}
	if cfg.MaxIdentities <= 0 {
		cfg.MaxIdentities = DefaultMaxIdentities
	}
	if cfg.Minutes <= 0 {
		cfg.Minutes = DefaultMinutes
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Recorder{
		clock:  cfg.Clock,
		in:     newInterner(),
		ring:   make([]packed, cfg.Size),
		index:  newLRU(cfg.MaxIdentities),
		bucket: newBuckets(cfg.Minutes),
	}
}

// Record keeps e, dropping the oldest event if the ring is full, counts it
// in its minute's bucket and the totals and, for a successful issuance,
// makes it its identity's latest. A zero e.At is set to now. Subscribers are
// then told, without waiting for them.
func (r *Recorder) Record(e Event) {
	if e.At.IsZero() {
		e.At = r.clock.Now()
	}
	r.mu.Lock()
	p := r.in.pack(&e)
	if r.n == len(r.ring) {
		r.in.release(&r.ring[r.next])
	} else {
		r.n++
	}
	r.ring[r.next] = p
	r.next = (r.next + 1) % len(r.ring)

	k, flags := kindIndex(e.Kind), p.flags
	r.totals[k].add(flags)
	r.bucket.add(p.at, k, flags)
	if e.IsIssuance() && !e.Failed {
		r.index.put(r.in, &p)
	}
	r.mu.Unlock()
	r.notify.Send()
}

// List returns the events recorded for spiffeID (all events for ""), newest
// first, at most limit of them (limit <= 0: all the ring holds).
func (r *Recorder) List(spiffeID string, limit int) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.in.lookup(spiffeID)
	if !ok {
		return nil
	}
	if limit <= 0 || limit > r.n {
		limit = r.n
	}
	var out []Event
	if spiffeID == "" {
		out = make([]Event, 0, limit)
	}
	for i := 1; i <= r.n && len(out) < limit; i++ {
		p := &r.ring[(r.next-i+len(r.ring))%len(r.ring)]
		if spiffeID == "" || p.spiffeID == id {
			out = append(out, r.in.unpack(p))
		}
	}
	return out
}

// Last returns the latest successful issuance recorded for id, if the index
// still holds it (it keeps the Config.MaxIdentities issued most recently).
func (r *Recorder) Last(id Identity) (Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.lookupKey(id)
	if !ok {
		return Event{}, false
	}
	p, ok := r.index.get(k)
	if !ok {
		return Event{}, false
	}
	return r.in.unpack(p), true
}

// Latest returns the latest successful issuance of each identity the index
// holds, the most recent first, at most limit (limit <= 0: all).
func (r *Recorder) Latest(limit int) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	if limit <= 0 || limit > r.index.len() {
		limit = r.index.len()
	}
	out := make([]Event, 0, limit)
	r.index.each(func(p *packed) bool {
		out = append(out, r.in.unpack(p))
		return len(out) < limit
	})
	return out
}

func (r *Recorder) lookupKey(id Identity) (lruKey, bool) {
	var k lruKey
	var ok [4]bool
	k.kind, ok[0] = r.in.lookup(string(id.Kind))
	k.agentID, ok[1] = r.in.lookup(id.AgentID)
	k.entryID, ok[2] = r.in.lookup(id.EntryID)
	k.spiffeID, ok[3] = r.in.lookup(id.SPIFFEID)
	return k, ok[0] && ok[1] && ok[2] && ok[3]
}

// Buckets returns the per-minute counts from the minute of since to the
// current one, oldest first, one bucket per minute including empty ones,
// and no further back than Config.Minutes.
func (r *Recorder) Buckets(since time.Time) []Bucket {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bucket.since(since, now)
}

// Totals returns the counts of every event recorded since New, by kind; its
// Start is zero.
func (r *Recorder) Totals() Bucket {
	r.mu.Lock()
	defer r.mu.Unlock()
	return toBucket(time.Time{}, &r.totals)
}

// IssuanceFailures is how many failed issuances (X.509 and JWT) were
// recorded since New.
func (r *Recorder) IssuanceFailures() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return uint64(r.totals[kindX509].failures) + uint64(r.totals[kindJWT].failures)
}

// Stats are the Recorder's sizes.
type Stats struct {
	Events     int // in the ring
	Identities int // in the last-issuance index
	Strings    int // distinct strings held
}

// Stats returns the Recorder's sizes.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{Events: r.n, Identities: r.index.len(), Strings: r.in.len()}
}

// Subscribe returns a channel that receives a value (the latest wins: one
// pending value for any number of Records) after events are recorded, and a
// function that ends the subscription.
func (r *Recorder) Subscribe() (<-chan struct{}, func()) { return r.notify.Subscribe() }
