package agent

import (
	"container/list"
	"iter"
)

// lru is a map of at most max entries that drops the least recently used
// one to make room. Every operation is O(1). Not safe for concurrent use:
// its owner locks.
type lru[K comparable, V any] struct {
	max   int
	order *list.List // of *lruItem[K, V]; front = most recently used
	items map[K]*list.Element
}

type lruItem[K comparable, V any] struct {
	key   K
	value V
}

// newLRU returns an empty LRU of at most max (> 0) entries.
func newLRU[K comparable, V any](max int) *lru[K, V] {
	if max <= 0 {
		panic("agent: lru size must be positive")
	}
	return &lru[K, V]{max: max, order: list.New(), items: make(map[K]*list.Element)}
}

// get returns key's value and makes it the most recently used.
func (l *lru[K, V]) get(key K) (V, bool) {
	el, ok := l.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	l.order.MoveToFront(el)
	return el.Value.(*lruItem[K, V]).value, true
}

// add sets key to value as the most recently used entry. It reports
// whether the least recently used entry was dropped to stay within max.
func (l *lru[K, V]) add(key K, value V) (evicted bool) {
	if el, ok := l.items[key]; ok {
		el.Value.(*lruItem[K, V]).value = value
		l.order.MoveToFront(el)
		return false
	}
	l.items[key] = l.order.PushFront(&lruItem[K, V]{key: key, value: value})
	if l.order.Len() <= l.max {
		return false
	}
	oldest := l.order.Back()
	l.order.Remove(oldest)
	delete(l.items, oldest.Value.(*lruItem[K, V]).key)
	return true
}

// remove drops key if present.
func (l *lru[K, V]) remove(key K) {
	if el, ok := l.items[key]; ok {
		l.order.Remove(el)
		delete(l.items, key)
	}
}

// len is the number of entries, at most max.
func (l *lru[K, V]) len() int { return l.order.Len() }

// all yields every entry, most recently used first, without changing the
// order. The LRU must not change during the iteration.
func (l *lru[K, V]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for el := l.order.Front(); el != nil; el = el.Next() {
			it := el.Value.(*lruItem[K, V])
			if !yield(it.key, it.value) {
				return
			}
		}
	}
}
