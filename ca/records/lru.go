package records

// lru is the last-issuance index: per identity, its latest issuance, in a
// doubly linked list of nodes in one slice, most recent first. Its copies of
// events hold their own string references. Not safe for concurrent use.
type lru struct {
	max   int
	keys  map[lruKey]int32
	nodes []lruNode
	head  int32 // most recent; -1 if empty
	tail  int32 // least recent
}

type lruKey struct{ kind, agentID, entryID, spiffeID uint32 }

type lruNode struct {
	ev         packed
	prev, next int32
}

func newLRU(max int) *lru {
	return &lru{max: max, keys: map[lruKey]int32{}, head: -1, tail: -1}
}

func keyOf(p *packed) lruKey {
	return lruKey{kind: p.kind, agentID: p.agentID, entryID: p.entryID, spiffeID: p.spiffeID}
}

func (l *lru) len() int { return len(l.keys) }

// put makes p its identity's latest issuance, evicting the least recent
// identity if the index is full.
func (l *lru) put(in *interner, p *packed) {
	k := keyOf(p)
	in.retain(p)
	if i, ok := l.keys[k]; ok {
		in.release(&l.nodes[i].ev)
		l.nodes[i].ev = *p
		l.unlink(i)
		l.pushFront(i)
		return
	}
	var i int32
	if len(l.keys) < l.max {
		i = int32(len(l.nodes))
		l.nodes = append(l.nodes, lruNode{})
	} else {
		i = l.tail
		old := &l.nodes[i].ev
		delete(l.keys, keyOf(old))
		in.release(old)
		l.unlink(i)
	}
	l.nodes[i].ev = *p
	l.keys[k] = i
	l.pushFront(i)
}

func (l *lru) get(k lruKey) (*packed, bool) {
	i, ok := l.keys[k]
	if !ok {
		return nil, false
	}
	return &l.nodes[i].ev, true
}

// each calls fn with each issuance, most recent first, until it returns false.
func (l *lru) each(fn func(*packed) bool) {
	for i := l.head; i >= 0; i = l.nodes[i].next {
		if !fn(&l.nodes[i].ev) {
			return
		}
	}
}

func (l *lru) unlink(i int32) {
	n := &l.nodes[i]
	if n.prev >= 0 {
		l.nodes[n.prev].next = n.next
	} else {
		l.head = n.next
	}
	if n.next >= 0 {
		l.nodes[n.next].prev = n.prev
	} else {
		l.tail = n.prev
	}
	n.prev, n.next = -1, -1
}

func (l *lru) pushFront(i int32) {
	n := &l.nodes[i]
	n.prev, n.next = -1, l.head
	if l.head >= 0 {
		l.nodes[l.head].prev = i
	}
	l.head = i
	if l.tail < 0 {
		l.tail = i
	}
}
