package registry

import "github.com/tallyid/tally/ca/store"

// index holds entries by ID, parent and SPIFFE ID. Entries in it are never
// modified; an update replaces the pointer.
type index struct {
	entries  map[string]*store.Entry
	children map[string]map[string]*store.Entry // parent_id → id → entry
	bySPIFFE map[string]map[string]*store.Entry // spiffe_id → id → entry
}

func newIndex() *index {
	return &index{
		entries:  map[string]*store.Entry{},
		children: map[string]map[string]*store.Entry{},
		bySPIFFE: map[string]map[string]*store.Entry{},
	}
}

func (x *index) put(e *store.Entry) {
	if old := x.entries[e.ID]; old != nil {
		x.remove(old)
	}
	x.entries[e.ID] = e
	addTo(x.children, e.ParentID, e)
	addTo(x.bySPIFFE, e.SPIFFEID, e)
}

func (x *index) remove(e *store.Entry) {
	delete(x.entries, e.ID)
	removeFrom(x.children, e.ParentID, e.ID)
	removeFrom(x.bySPIFFE, e.SPIFFEID, e.ID)
}

func addTo(m map[string]map[string]*store.Entry, key string, e *store.Entry) {
	inner := m[key]
	if inner == nil {
		inner = map[string]*store.Entry{}
		m[key] = inner
	}
	inner[e.ID] = e
}

func removeFrom(m map[string]map[string]*store.Entry, key, id string) {
	inner := m[key]
	delete(inner, id)
	if len(inner) == 0 {
		delete(m, key)
	}
}
