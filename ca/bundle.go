package ca

import (
	"context"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// Bundle returns a copy of the current trust bundle: the X.509 authorities
// of every live slot (prepared, active and old; in upstream mode the upstream
// trust anchor), the JWT authorities by kid, the sequence number and the
// refresh hint. Safe for concurrent use.
func (a *Authority) Bundle() *spiffebundle.Bundle {
	return a.bundle.Load().Clone()
}

// SubscribeBundle returns a channel that receives the current bundle at once
// and then every new bundle, and the same bundle again whenever the key
// slots change while the bundle does not (a key activated or tainted: see
// Slots and TaintedX509IDs), and a function that ends the subscription and
// closes the channel. Only the latest bundle is kept for a slow receiver:
// the authority never blocks on a subscriber. Each received bundle is the
// receiver's own copy.
func (a *Authority) SubscribeBundle() (<-chan *spiffebundle.Bundle, func()) {
	return a.subs.subscribe(a.bundle.Load())
}

// buildBundle derives the bundle of st.
func (a *Authority) buildBundle(st *state) *spiffebundle.Bundle {
	b := spiffebundle.New(a.td)
	for _, s := range st.x509 {
		b.AddX509Authority(s.anchor()) // a no-op for an anchor already added
	}
	for _, s := range st.jwt {
		_ = b.AddJWTAuthority(s.id, s.public) // fails only for an empty kid, refused at load
	}
	b.SetRefreshHint(a.cfg.RefreshHint)
	b.SetSequenceNumber(st.seq)
	return b
}

// saveBundle persists b as SPIFFE bundle JSON and clears bundleDirty.
// Callers hold a.mu.
func (a *Authority) saveBundle(ctx context.Context, b *spiffebundle.Bundle) error {
	data, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("ca: marshal bundle: %w", err)
	}
	if err := a.cfg.Journal.SaveBundle(ctx, data); err != nil {
		return fmt.Errorf("ca: save bundle: %w", err)
	}
	a.bundleDirty = false
	return nil
}

// subscribers fans bundles out to SubscribeBundle channels, latest wins.
type subscribers struct {
	mu    sync.Mutex
	next  uint64
	chans map[uint64]chan *spiffebundle.Bundle
}

func (s *subscribers) subscribe(current *spiffebundle.Bundle) (<-chan *spiffebundle.Bundle, func()) {
	ch := make(chan *spiffebundle.Bundle, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chans == nil {
		s.chans = make(map[uint64]chan *spiffebundle.Bundle)
	}
	id := s.next
	s.next++
	s.chans[id] = ch
	ch <- current.Clone()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			delete(s.chans, id)
			close(ch)
		})
	}
}

// publish replaces whatever a subscriber has not received yet with b.
func (s *subscribers) publish(b *spiffebundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.chans {
		select {
		case <-ch:
		default:
		}
		select {
		case ch <- b.Clone():
		default: // unreachable: this is the only sender and it holds s.mu
		}
	}
}
