package registry

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tallyid/tally/ca/store"
)

// Scope is what makes an agent the parent of entries: its own ID, the
// aliases it was given at attestation (a join token's SPIFFE ID), and its
// node selectors, which make it a member of every node-alias entry (an entry
// parented to the server ID) whose selectors they include.
type Scope struct {
	AgentID   string
	Aliases   []string
	Selectors []store.Selector
}

// Delta is what an agent must apply to be current at Revision.
type Delta struct {
	Revision uint64
	// ChangedAt is when the registry reached Revision.
	ChangedAt time.Time
	// Reset: Upserts is the agent's whole set; drop everything else.
	Reset   bool
	Upserts []*store.Entry
	Deleted []string
}

// Empty reports whether applying d changes nothing.
func (d Delta) Empty() bool { return !d.Reset && len(d.Upserts) == 0 && len(d.Deleted) == 0 }

// Changes returns what an agent with scope sc that is current at revision
// since must apply. since == 0, a revision outside the in-memory window, or
// a change that moved entries between subtrees gives a snapshot (Reset).
// Entries are shared with the registry and must not be modified.
func (r *Registry) Changes(sc Scope, since uint64) Delta {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d := Delta{Revision: r.rev, ChangedAt: r.revAt}
	if since == r.rev && since != 0 {
		return d
	}
	evs := r.eventsAfterLocked(since)
	reset := since == 0 || since > r.rev || since < r.floor
	for i := 0; !reset && i < len(evs); i++ {
		reset = evs[i].topological
	}
	roots := r.rootsLocked(sc)
	if !reset && !touchesLocked(r, evs, roots) {
		return d // nothing since concerns this agent: no walk of its subtree
	}
	set := r.subtreeLocked(roots, since)
	d.Reset = reset
	for _, n := range set {
		if reset || n.dirty {
			d.Upserts = append(d.Upserts, n.e)
		}
	}
	sort.Slice(d.Upserts, func(i, j int) bool { return d.Upserts[i].ID < d.Upserts[j].ID })
	if reset {
		return d
	}
	// An entry left the set if it is not in it now but its parent at the
	// time of the event was (moves of whole subtrees gave a reset above).
	seen := map[string]bool{}
	for i := range evs {
		was := &evs[i].Entry
		if evs[i].Previous != nil {
			was = evs[i].Previous
		}
		if _, in := set[was.ID]; in || seen[was.ID] || !r.inSetLocked(roots, set, was.ParentID) {
			continue
		}
		seen[was.ID] = true
		d.Deleted = append(d.Deleted, was.ID)
	}
	return d
}

// touchesLocked reports whether any of evs may concern the agent with
// roots. An event cannot when its entry's parent (before and after) is the
// ID of another agent (or the server): no entry has a reserved ID, so none
// in this agent's subtree can lead there. With one agent per node and the
// registrar writing a node's pods under its agent, this spares every other
// agent the walk of its subtree at each write.
func touchesLocked(r *Registry, evs []ringEvent, roots map[string]bool) bool {
	concerns := func(parent string) bool { return roots[parent] || !strings.HasPrefix(parent, r.reserved) }
	for i := range evs {
		if concerns(evs[i].Entry.ParentID) || (evs[i].Previous != nil && concerns(evs[i].Previous.ParentID)) {
			return true
		}
	}
	return false
}

// Authorized returns the entry if the agent with scope sc may issue it.
func (r *Registry) Authorized(sc Scope, entryID string) (store.Entry, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e := r.idx.entries[entryID]
	if e == nil {
		return store.Entry{}, fmt.Errorf("entry %q: %w", entryID, store.ErrNotFound)
	}
	roots := r.rootsLocked(sc)
	visited := map[string]bool{}
	queue := []string{e.ParentID}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if visited[p] {
			continue
		}
		visited[p] = true
		if roots[p] {
			return *e, nil
		}
		for _, up := range r.idx.bySPIFFE[p] {
			queue = append(queue, up.ParentID)
		}
	}
	return store.Entry{}, fmt.Errorf("entry %q: %w %q", entryID, ErrNotAuthorized, sc.AgentID)
}

func (r *Registry) inSetLocked(roots map[string]bool, set map[string]*node, spiffeID string) bool {
	if roots[spiffeID] {
		return true
	}
	for id := range r.idx.bySPIFFE[spiffeID] {
		if _, ok := set[id]; ok {
			return true
		}
	}
	return false
}

// rootsLocked returns the SPIFFE IDs whose children the agent may issue.
func (r *Registry) rootsLocked(sc Scope) map[string]bool {
	roots := map[string]bool{sc.AgentID: true}
	for _, a := range sc.Aliases {
		roots[a] = true
	}
	if len(sc.Selectors) > 0 {
		for _, alias := range r.idx.children[r.serverID] {
			if SubsetOf(alias.Selectors, sc.Selectors) {
				roots[alias.SPIFFEID] = true
			}
		}
	}
	delete(roots, r.serverID)
	return roots
}

type node struct {
	e     *store.Entry
	dirty bool // changed after `since`, itself or an ancestor
}

// subtreeLocked walks down from the roots. An entry is dirty if it or an
// entry above it on the path changed after since.
func (r *Registry) subtreeLocked(roots map[string]bool, since uint64) map[string]*node {
	type item struct {
		spiffeID string
		dirty    bool
	}
	set := map[string]*node{}
	visited := map[string]bool{} // spiffe id → visited dirty
	queue := make([]item, 0, len(roots))
	for id := range roots {
		queue = append(queue, item{id, false})
	}
	for len(queue) > 0 {
		it := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if d, ok := visited[it.spiffeID]; ok && (d || !it.dirty) {
			continue
		}
		visited[it.spiffeID] = it.dirty
		for _, e := range r.idx.children[it.spiffeID] {
			dirty := it.dirty || e.Revision > since
			n := set[e.ID]
			if n == nil {
				set[e.ID] = &node{e: e, dirty: dirty}
			} else if dirty {
				n.dirty = true
			}
			queue = append(queue, item{e.SPIFFEID, dirty})
		}
	}
	return set
}

// topologicalLocked reports whether an event, about to be applied to the
// index, can move entries it does not name in or out of an agent's set: a
// change of a node alias, or the delete or move of an entry that other
// entries are parented to.
func (r *Registry) topologicalLocked(ev *store.Event) bool {
	if ev.Entry.ParentID == r.serverID || (ev.Previous != nil && ev.Previous.ParentID == r.serverID) {
		return true
	}
	switch ev.Type {
	case store.EventDeleted:
		return len(r.idx.children[ev.Entry.SPIFFEID]) > 0
	case store.EventUpdated:
		p := ev.Previous
		if p == nil {
			return true
		}
		moved := p.ParentID != ev.Entry.ParentID || p.SPIFFEID != ev.Entry.SPIFFEID
		return moved && (len(r.idx.children[p.SPIFFEID]) > 0 || len(r.idx.children[ev.Entry.SPIFFEID]) > 0)
	}
	return false
}

func (r *Registry) eventsAfterLocked(since uint64) []ringEvent {
	i, _ := slices.BinarySearchFunc(r.ring, since+1, func(ev ringEvent, rev uint64) int {
		switch {
		case ev.Revision < rev:
			return -1
		case ev.Revision > rev:
			return 1
		}
		return 0
	})
	return r.ring[i:]
}
