// Package notify tells subscribers that something changed, without ever
// blocking the one that changed it.
package notify

import "sync"

// Hub fans change notifications out to subscribers. Each subscriber's
// channel holds one pending notification: any number of changes before it
// reads are one. The zero Hub is ready to use; it is safe for concurrent use.
type Hub struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Subscribe returns a channel that receives after each Send (coalesced),
// and a function that ends the subscription.
func (h *Hub) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan struct{}]struct{}{}
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// Send notifies every subscriber that has no notification pending.
func (h *Hub) Send() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
