// Package registry keeps registration entries: it validates and writes them
// through the store, holds the whole entry set in memory indexed by parent,
// and answers, per agent, which entries it may issue and what changed since a
// revision. One Registry serves many concurrent readers.
package registry

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/reserved"
	"github.com/tallyid/tally/internal/text"
)

// Log keys.

// Store is what the registry needs of the server's store.
type Store interface {
	CreateEntries(ctx context.Context, entries []store.Entry) ([]store.Entry, error)
	UpdateEntry(ctx context.Context, e store.Entry) (store.Entry, error)
	DeleteEntries(ctx context.Context, ids []string) error
	WriteEntries(ctx context.Context, w store.EntryWrites) (store.EntryWrites, error)
	GetEntry(ctx context.Context, id string) (store.Entry, error)
	ListEntries(ctx context.Context, f store.EntryFilter) ([]store.Entry, error)
	Revision(ctx context.Context) (uint64, error)
	Events(ctx context.Context, after uint64, limit int) ([]store.Event, error)
}

// Config configures a Registry.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       Store
	Limits      Limits
	Clock       clock.WithTicker
	Logger      *slog.Logger
	// EventWindow is how many recent events are kept in memory to send
	// agents deltas instead of snapshots; an agent further behind gets a
	// snapshot of its entries. Default 10,000 (each event holds an entry,
	// so the window costs memory like that many entries).
	EventWindow int
}

// Registry is the validated, cached view of registration entries.
type Registry struct {
	cfg      Config
	serverID string
	reserved string // reserved.Prefix: no entry has an ID that starts so

	catchMu sync.Mutex // serialises catchUp

	mu    sync.RWMutex
	idx   *index
	rev   uint64
	revAt time.Time   // when rev was applied here
	floor uint64      // deltas can be computed for since >= floor
	ring  []ringEvent // events after floor, oldest first

	subMu  sync.Mutex
	subs   map[int]chan struct{}
	nextID int
}

// New returns a Registry; call Load before serving and Run to follow
// changes made by other replicas.
func New(cfg Config) *Registry {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.EventWindow == 0 {
		cfg.EventWindow = 10_000
	}
	return &Registry{
		cfg:      cfg,
		serverID: reserved.ServerID(cfg.TrustDomain).String(),
		reserved: reserved.Prefix(cfg.TrustDomain),
		idx:      newIndex(),
		subs:     map[int]chan struct{}{},
	}
}

// Load reads every entry from the store. It may be called again to reload.
// An entry whose text CheckText refuses is logged and left out: it is not
// sent to agents, minted for or counted as an admin (see servable).
func (r *Registry) Load(ctx context.Context) error {
	r.catchMu.Lock()
	defer r.catchMu.Unlock()
	return r.loadLocked(ctx)
}

func (r *Registry) loadLocked(ctx context.Context) error {
	rev, err := r.cfg.Store.Revision(ctx)
	if err != nil {
		return fmt.Errorf("registry: load: %w", err)
	}
	idx := newIndex()
	after := ""
	for {
		page, err := r.cfg.Store.ListEntries(ctx, store.EntryFilter{AfterID: after, Limit: 10_000})
		if err != nil {
			return fmt.Errorf("registry: load: %w", err)
		}
		for i := range page {
			if r.servable(&page[i]) {
				idx.put(&page[i])
			}
		}
		if len(page) < 10_000 {
			break
		}
		after = page[len(page)-1].ID
	}
	r.mu.Lock()
	r.idx, r.rev, r.floor, r.ring, r.revAt = idx, rev, rev, nil, r.cfg.Clock.Now()
	r.mu.Unlock()
	if err := r.catchUpLocked(ctx); err != nil {
		return err
	}
	r.notify()
	return nil
}

// CatchUp applies the events written since the last call.
func (r *Registry) CatchUp(ctx context.Context) error {
	r.catchMu.Lock()
	defer r.catchMu.Unlock()
	return r.catchUpLocked(ctx)
}

func (r *Registry) catchUpLocked(ctx context.Context) error {
	changed := false
	for {
		r.mu.RLock()
		after := r.rev
		r.mu.RUnlock()
		evs, err := r.cfg.Store.Events(ctx, after, 10_000)
		if errors.Is(err, store.ErrCompacted) {
			r.cfg.Logger.Warn("registry: event log compacted past our revision, reloading", logkey.Revision, after)
			return r.loadLocked(ctx)
		}
		if err != nil {
			return fmt.Errorf("registry: events after %d: %w", after, err)
		}
		if len(evs) == 0 {
			break
		}
		r.apply(evs)
		changed = true
	}
	if changed {
		r.notify()
	}
	return nil
}

func (r *Registry) apply(evs []store.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range evs {
		ev := evs[i]
		if ev.Revision <= r.rev {
			continue
		}
		cur := r.idx.entries[ev.Entry.ID]
		if ev.Type != store.EventDeleted && !r.servable(&ev.Entry) {
			ev = refusedEvent(ev, cur)
		}
		topo := r.topologicalLocked(&ev)
		switch ev.Type {
		case store.EventDeleted:
			if cur != nil && cur.Revision <= ev.Revision {
				r.idx.remove(cur)
			}
		default:
			if cur == nil || cur.Revision < ev.Revision {
				e := ev.Entry
				r.idx.put(&e)
			}
		}
		r.ring = append(r.ring, ringEvent{Event: ev, topological: topo})
		r.rev = ev.Revision
		r.revAt = r.cfg.Clock.Now()
	}
	if over := len(r.ring) - r.cfg.EventWindow; over > 0 {
		drop := max(over, r.cfg.EventWindow/4)
		r.floor = r.ring[drop-1].Revision
		r.ring = append([]ringEvent(nil), r.ring[drop:]...)
	}
}

// servable reports whether a stored entry may be indexed, and so sent to
// agents, minted for and counted as an admin: its text passes CheckText.
// Entries stored before that check, or written around the registry, may not.
// A refused entry is logged with one warning naming it and the refused text,
// escaped.
func (r *Registry) servable(e *store.Entry) bool {
	err := checkEntryText(e)
	if err == nil {
		return true
	}
	attrs := []any{logkey.EntryID, text.Printable(e.ID), logkey.SPIFFEID, text.Printable(e.SPIFFEID), logkey.Error, err}
	var te *textError
	if errors.As(err, &te) {
		attrs = append(attrs, logkey.Field, te.field, logkey.Text, strconv.Quote(te.text))
	}
	r.cfg.Logger.Warn("registry: stored entry has refused text, not serving it; fix or delete it", attrs...)
	return false
}

// refusedEvent is what a create or update that brings refused text means to
// agents: the deletion of cur, the served version, if there is one (so that
// its subtree goes with it), else nothing (an entry without a parent, which
// no agent has).
func refusedEvent(ev store.Event, cur *store.Entry) store.Event {
	out := store.Event{Revision: ev.Revision, Type: store.EventDeleted, Entry: store.Entry{ID: ev.Entry.ID, Revision: ev.Revision}}
	if cur != nil {
		out.Entry = *cur
	}
	return out
}

// ringEvent is an event with what it meant when it was applied.
type ringEvent struct {
	store.Event
	// topological: the event moved entries it does not name (see
	// topologicalLocked), judged on the index just before it applied.
	topological bool
}

// Subscribe returns a channel that receives a value (latest wins) whenever
// the entry set changes, and a function to unsubscribe.
func (r *Registry) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	r.subMu.Lock()
	id := r.nextID
	r.nextID++
	r.subs[id] = ch
	r.subMu.Unlock()
	return ch, func() {
		r.subMu.Lock()
		delete(r.subs, id)
		r.subMu.Unlock()
	}
}

func (r *Registry) notify() {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	for _, ch := range r.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Revision is the revision the in-memory view is current at.
func (r *Registry) Revision() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.rev
}

// Count is the number of entries.
func (r *Registry) Count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.idx.entries)
}

// CreateEntries validates all entries, then creates all or none. IDs are
// assigned here; the returned entries are as stored.
func (r *Registry) CreateEntries(ctx context.Context, entries []store.Entry) ([]store.Entry, error) {
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: no entries given", ErrInvalid)
	}
	now := r.cfg.Clock.Now().UTC().Truncate(time.Second)
	for i := range entries {
		if err := ValidateEntry(r.cfg.TrustDomain, r.cfg.Limits, &entries[i]); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		entries[i].ID = NewID()
		entries[i].CreatedAt = now
	}
	out, err := r.cfg.Store.CreateEntries(ctx, entries)
	if err != nil {
		return nil, err
	}
	return out, r.CatchUp(ctx)
}

// UpdateEntry validates e and replaces the entry with e.ID: a hand edit.
// An entry the registrar keeps (store.Owner) is refused with ErrOwned
// unless force; forced, it keeps its owner. Hand edits never set an owner.
func (r *Registry) UpdateEntry(ctx context.Context, e store.Entry, force bool) (store.Entry, error) {
	if e.ID == "" {
		return store.Entry{}, fmt.Errorf("%w: id is required", ErrInvalid)
	}
	owners, err := r.handEdit(ctx, []string{e.ID}, force)
	if err != nil {
		return store.Entry{}, err
	}
	e.Owner = owners[0]
	if err := ValidateEntry(r.cfg.TrustDomain, r.cfg.Limits, &e); err != nil {
		return store.Entry{}, err
	}
	out, err := r.cfg.Store.UpdateEntry(ctx, e)
	if err != nil {
		return store.Entry{}, err
	}
	return out, r.CatchUp(ctx)
}

// handEdit is the rule for changing entries by hand: refused while the
// registrar keeps one, unless forced. It returns the entries' owners, which
// a forced edit keeps. An entry's owner never changes (the registrar creates
// its own entries and never adopts others), so checking the view caught
// up to now before the write is enough.
func (r *Registry) handEdit(ctx context.Context, ids []string, force bool) ([]*store.Owner, error) {
	if err := r.CatchUp(ctx); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	owners := make([]*store.Owner, len(ids))
	for i, id := range ids {
		if e := r.idx.entries[id]; e != nil {
			owners[i] = e.Owner
		}
		if o := owners[i]; o != nil && !force {
			return nil, fmt.Errorf("%w: entry %q is rendered from %s %q of cluster %q; change that resource instead, or force the edit (the registrar rewrites the entry when it next reconciles it)",
				ErrOwned, id, o.Kind, o.Name, o.Cluster)
		}
	}
	return owners, nil
}

// WriteEntries validates w's updates and creations, then applies its
// deletions, updates and creations at once, all or none (store.EntryWrites).
// Creations get their IDs here.
func (r *Registry) WriteEntries(ctx context.Context, w store.EntryWrites) (store.EntryWrites, error) {
	if len(w.Delete)+len(w.Update)+len(w.Create) == 0 {
		return store.EntryWrites{}, fmt.Errorf("%w: nothing to write", ErrInvalid)
	}
	for i := range w.Update {
		if w.Update[i].ID == "" {
			return store.EntryWrites{}, fmt.Errorf("%w: update %d: id is required", ErrInvalid, i)
		}
		if err := ValidateEntry(r.cfg.TrustDomain, r.cfg.Limits, &w.Update[i]); err != nil {
			return store.EntryWrites{}, fmt.Errorf("update %q: %w", w.Update[i].ID, err)
		}
	}
	now := r.cfg.Clock.Now().UTC().Truncate(time.Second)
	for i := range w.Create {
		if err := ValidateEntry(r.cfg.TrustDomain, r.cfg.Limits, &w.Create[i]); err != nil {
			return store.EntryWrites{}, fmt.Errorf("create %d (%s): %w", i, w.Create[i].SPIFFEID, err)
		}
		w.Create[i].ID = NewID()
		w.Create[i].CreatedAt = now
	}
	out, err := r.cfg.Store.WriteEntries(ctx, w)
	if err != nil {
		return store.EntryWrites{}, err
	}
	return out, r.CatchUp(ctx)
}

// Validate checks and normalises e as a write would (ValidateEntry with
// this registry's trust domain and limits).
func (r *Registry) Validate(e *store.Entry) error {
	return ValidateEntry(r.cfg.TrustDomain, r.cfg.Limits, e)
}

// FindEqual returns the ID of an entry equal to e (Equal), from memory;
// "" if none. e must have passed Validate (its selectors sorted, as stored
// ones are). It looks among the entries of e's parent: a node's few, where
// the entries of one SPIFFE ID may be thousands.
func (r *Registry) FindEqual(e *store.Entry) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id, other := range r.idx.children[e.ParentID] {
		if Equal(other, e) {
			return id
		}
	}
	return ""
}

// Equal reports whether two validated entries are what the store refuses
// twice: the same spiffe_id, parent_id and selector set.
func Equal(a, b *store.Entry) bool {
	return a.SPIFFEID == b.SPIFFEID && a.ParentID == b.ParentID && slices.Equal(a.Selectors, b.Selectors)
}

// Owned calls f with every entry whose owner is of cluster, from memory;
// f must not keep the entry beyond the call or change it.
func (r *Registry) Owned(cluster string, f func(e *store.Entry)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.idx.entries {
		if e.Owner != nil && e.Owner.Cluster == cluster {
			f(e)
		}
	}
}

// DeleteEntries deletes all entries or none, by hand: entries the
// registrar keeps are refused with ErrOwned unless force.
func (r *Registry) DeleteEntries(ctx context.Context, ids []string, force bool) error {
	if len(ids) == 0 {
		return fmt.Errorf("%w: no entry ids given", ErrInvalid)
	}
	if _, err := r.handEdit(ctx, ids, force); err != nil {
		return err
	}
	if err := r.cfg.Store.DeleteEntries(ctx, ids); err != nil {
		return err
	}
	return r.CatchUp(ctx)
}

// GetEntry returns an entry from the store.
func (r *Registry) GetEntry(ctx context.Context, id string) (store.Entry, error) {
	return r.cfg.Store.GetEntry(ctx, id)
}

// ListEntries lists entries from the store.
func (r *Registry) ListEntries(ctx context.Context, f store.EntryFilter) ([]store.Entry, error) {
	for _, s := range f.Selectors {
		if err := ValidateSelector(s); err != nil {
			return nil, err
		}
	}
	return r.cfg.Store.ListEntries(ctx, f)
}

// IsAdmin reports whether an entry with this SPIFFE ID has the admin flag.
func (r *Registry) IsAdmin(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.idx.bySPIFFE[id] {
		if e.Admin {
			return true
		}
	}
	return false
}

// NewID returns a random UUIDv4 string.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
