package agent

import (
	"iter"
	"maps"
	"time"

	"github.com/tallyid/tally/workloadapi"
)

// svidStore holds the workload X509-SVIDs the agent minted, per entry ID,
// and how many connected workloads need each entry. SVIDs of needed
// entries are all kept; those of entries no workload needs wait in an LRU
// of a fixed size, so that a workload that comes back is served without a
// mint. Not safe for concurrent use: its owner locks.
type svidStore struct {
	need   map[string]int
	inUse  map[string]*cachedSVID    // entries with need > 0
	unused *lru[string, *cachedSVID] // entries with need == 0
}

type cachedSVID struct {
	svid    workloadapi.X509SVID
	renewAt time.Time // moved sooner when its signer is tainted
	svidInfo
}

// newSVIDStore returns an empty store that keeps at most maxUnused (> 0)
// SVIDs of entries no workload needs.
func newSVIDStore(maxUnused int) *svidStore {
	return &svidStore{need: map[string]int{}, inUse: map[string]*cachedSVID{}, unused: newLRU[string, *cachedSVID](maxUnused)}
}

// get returns the SVID of entry id, or nil.
func (s *svidStore) get(id string) *cachedSVID {
	if c := s.inUse[id]; c != nil {
		return c
	}
	c, _ := s.unused.get(id)
	return c
}

// fresh reports whether entry id has an SVID not yet due for renewal at now.
func (s *svidStore) fresh(id string, now time.Time) bool {
	c := s.get(id)
	return c != nil && now.Before(c.renewAt)
}

// needed reports whether a connected workload needs entry id.
func (s *svidStore) needed(id string) bool { return s.need[id] > 0 }

// subscribers is how many subscriptions hold entry id (acquire less
// release): the Workload API streams following its identity.
func (s *svidStore) subscribers(id string) int { return s.need[id] }

// all yields every SVID held, needed or not, without touching the LRU's
// order. The store must not change during the iteration.
func (s *svidStore) all() iter.Seq2[string, *cachedSVID] {
	return func(yield func(string, *cachedSVID) bool) {
		for id, c := range s.inUse {
			if !yield(id, c) {
				return
			}
		}
		for id, c := range s.unused.all() {
			if !yield(id, c) {
				return
			}
		}
	}
}

// neededIDs yields the entries some workload needs, with or without an SVID.
func (s *svidStore) neededIDs() iter.Seq[string] { return maps.Keys(s.need) }

// put stores the SVID of entry id, replacing the one before; it reports
// whether there was one (a rotation).
func (s *svidStore) put(id string, c *cachedSVID) (replaced bool) {
	replaced = s.get(id) != nil
	if s.needed(id) {
		s.inUse[id] = c
		return replaced
	}
	s.unused.add(id, c)
	return replaced
}

// drop forgets the SVID of entry id, if any.
func (s *svidStore) drop(id string) {
	delete(s.inUse, id)
	s.unused.remove(id)
}

// acquire counts one more workload needing entry id.
func (s *svidStore) acquire(id string) {
	s.need[id]++
	if s.need[id] > 1 {
		return
	}
	if c, ok := s.unused.get(id); ok {
		s.unused.remove(id)
		s.inUse[id] = c
	}
}

// release counts one workload fewer needing entry id; it reports whether
// none is left, in which case the SVID moves to the LRU (possibly pushing
// the least recently released one out).
func (s *svidStore) release(id string) (unneeded bool) {
	s.need[id]--
	if s.need[id] > 0 {
		return false
	}
	delete(s.need, id)
	if c := s.inUse[id]; c != nil {
		delete(s.inUse, id)
		s.unused.add(id, c)
	}
	return true
}

// len is the number of SVIDs held, needed or not.
func (s *svidStore) len() int { return len(s.inUse) + s.unused.len() }
