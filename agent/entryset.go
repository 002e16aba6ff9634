package agent

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/attest"
)

// entrySet is the registration entries this agent may issue, indexed by
// selector. Not safe for concurrent use: its owner locks.
type entrySet struct {
	byID  map[string]*entry
	bySel map[attest.Selector]map[string]*entry
}

func newEntrySet() *entrySet {
	return &entrySet{byID: map[string]*entry{}, bySel: map[attest.Selector]map[string]*entry{}}
}

// get returns the current version of entry id, or nil.
func (s *entrySet) get(id string) *entry { return s.byID[id] }

// apply applies the entries of a sync step (not its bundle). It returns
// the entries that changed: ID → the new version, or nil if the entry is
// gone. An upsert of the revision already held is no change.
func (s *entrySet) apply(u syncUpdate) map[string]*entry {
	changed := map[string]*entry{}
	if u.Reset {
		keep := make(map[string]bool, len(u.Upserts))
		for _, e := range u.Upserts {
			keep[e.ID] = true
		}
		for id := range s.byID {
			if !keep[id] {
				s.remove(id)
				changed[id] = nil
			}
		}
	}
	for _, id := range u.Deleted {
		if _, ok := s.byID[id]; ok {
			s.remove(id)
			changed[id] = nil
		}
	}
	for _, e := range u.Upserts {
		old := s.byID[e.ID]
		if old != nil && old.Revision == e.Revision {
			continue
		}
		if old != nil {
			s.remove(e.ID)
		}
		s.add(e)
		changed[e.ID] = e
	}
	return changed
}

func (s *entrySet) add(e *entry) {
	s.byID[e.ID] = e
	for _, sel := range e.Selectors {
		m := s.bySel[sel]
		if m == nil {
			m = map[string]*entry{}
			s.bySel[sel] = m
		}
		m[e.ID] = e
	}
}

func (s *entrySet) remove(id string) {
	e := s.byID[id]
	delete(s.byID, id)
	for _, sel := range e.Selectors {
		delete(s.bySel[sel], id)
		if len(s.bySel[sel]) == 0 {
			delete(s.bySel, sel)
		}
	}
}

// match returns the entries whose selectors are all in have (AND),
// limited to those of id unless id is zero.
func (s *entrySet) match(have map[attest.Selector]struct{}, id spiffeid.ID) map[string]*entry {
	out := map[string]*entry{}
	for sel := range have {
		for eid, e := range s.bySel[sel] {
			if !id.IsZero() && e.SPIFFEID != id {
				continue
			}
			if _, seen := out[eid]; !seen && e.matches(have) {
				out[eid] = e
			}
		}
	}
	return out
}
