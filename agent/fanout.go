package agent

import (
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/workloadapi"
)

// fanout is the set of X.509 and bundle subscribers. Each subscriber holds
// only the latest value (a buffered(1) channel, drained before a send), so
// a slow reader skips states and never blocks the sender. Not safe for
// concurrent use: its owner locks.
type fanout struct {
	x509    map[*subscription]struct{}
	bundles map[chan *spiffebundle.Bundle]struct{}
}

func newFanout() *fanout {
	return &fanout{x509: map[*subscription]struct{}{}, bundles: map[chan *spiffebundle.Bundle]struct{}{}}
}

// subscription is one caller following its X.509 identities: the
// selectors it was attested with and the entries they match.
type subscription struct {
	selectors map[attest.Selector]struct{}
	ids       map[string]*entry
	ch        chan workloadapi.X509Update
	started   time.Time
	delivered bool // the first update was sent
	once      sync.Once
	close     func(*subscription) // run once by Close
}

func newSubscription(selectors []attest.Selector, started time.Time, close func(*subscription)) *subscription {
	sub := &subscription{
		selectors: make(map[attest.Selector]struct{}, len(selectors)),
		ids:       map[string]*entry{},
		ch:        make(chan workloadapi.X509Update, 1),
		started:   started,
		close:     close,
	}
	for _, s := range selectors {
		sub.selectors[s] = struct{}{}
	}
	return sub
}

func (s *subscription) Updates() <-chan workloadapi.X509Update { return s.ch }

// Close ends the subscription; it is safe to call more than once.
func (s *subscription) Close() { s.once.Do(func() { s.close(s) }) }

func (f *fanout) addX509(sub *subscription)    { f.x509[sub] = struct{}{} }
func (f *fanout) removeX509(sub *subscription) { delete(f.x509, sub) }

// holding returns the X.509 subscribers that have any of ids.
func (f *fanout) holding(ids map[string]bool) []*subscription {
	var out []*subscription
	for sub := range f.x509 {
		for id := range sub.ids {
			if ids[id] {
				out = append(out, sub)
				break
			}
		}
	}
	return out
}

// sendX509 replaces the subscriber's pending update with upd.
func (f *fanout) sendX509(sub *subscription, upd workloadapi.X509Update) { sendLatest(sub.ch, upd) }

// addBundle adds a bundle subscriber, sent current at once if not nil.
func (f *fanout) addBundle(current *spiffebundle.Bundle) chan *spiffebundle.Bundle {
	ch := make(chan *spiffebundle.Bundle, 1)
	f.bundles[ch] = struct{}{}
	if current != nil {
		ch <- current.Clone()
	}
	return ch
}

func (f *fanout) removeBundle(ch chan *spiffebundle.Bundle) { delete(f.bundles, ch) }

// sendBundle sends every bundle subscriber its own copy of b.
func (f *fanout) sendBundle(b *spiffebundle.Bundle) {
	for ch := range f.bundles {
		sendLatest(ch, b.Clone())
	}
}

// sendLatest replaces whatever ch holds with v; it never blocks.
func sendLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
