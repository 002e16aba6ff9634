package records

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca"
)

// Slots is what Rotations needs of the authority (*ca.Authority).
type Slots interface {
	Slots() []ca.SlotInfo
	SubscribeBundle() (<-chan *spiffebundle.Bundle, func())
}

// RotationsConfig configures Rotations.
type RotationsConfig struct {
	Authority Slots
	Recorder  interface{ Record(Event) }
	Clock     clock.PassiveClock
}

// Rotations records the CA's slot changes as KindRotation events: a slot
// prepared, activated, retired (old), tainted or dropped, with the slot ID as
// KeyID, its validity, and Detail "<kind> slot <what>". It compares the
// slots whenever the authority publishes the bundle (which it does again on
// a taint); the slots it finds when it starts are the baseline, not
// recorded.
type Rotations struct {
	cfg RotationsConfig
}

// NewRotations returns Rotations; Run starts it.
func NewRotations(cfg RotationsConfig) *Rotations {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Rotations{cfg: cfg}
}

var errBundleClosed = errors.New("records: bundle subscription ended")

// Run records slot changes until ctx is done.
func (w *Rotations) Run(ctx context.Context) error {
	bundles, stop := w.cfg.Authority.SubscribeBundle()
	defer stop()
	prev := w.read()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-bundles:
			if !ok {
				return errBundleClosed
			}
		}
		cur := w.read()
		for _, e := range diffSlots(prev, cur) {
			e.At = w.cfg.Clock.Now()
			w.cfg.Recorder.Record(e)
		}
		prev = cur
	}
}

func (w *Rotations) read() []ca.SlotInfo { return w.cfg.Authority.Slots() }

// diffSlots returns the events that take prev to cur: cur's slots in order,
// then those dropped.
func diffSlots(prev, cur []ca.SlotInfo) []Event {
	find := func(in []ca.SlotInfo, s ca.SlotInfo) (ca.SlotInfo, bool) {
		for _, o := range in {
			if o.Kind == s.Kind && o.ID == s.ID {
				return o, true
			}
		}
		return ca.SlotInfo{}, false
	}
	var out []Event
	ev := func(s ca.SlotInfo, what string) {
		out = append(out, Event{Kind: KindRotation, KeyID: s.ID, NotBefore: s.NotBefore, NotAfter: s.NotAfter,
			Detail: string(s.Kind) + " slot " + what})
	}
	for _, s := range cur {
		old, ok := find(prev, s)
		if !ok || old.Status != s.Status {
			ev(s, statusVerb(s.Status))
		}
		if s.Tainted && !old.Tainted {
			ev(s, "tainted")
		}
	}
	for _, s := range prev {
		if _, ok := find(cur, s); !ok {
			ev(s, "dropped")
		}
	}
	return out
}

func statusVerb(s ca.SlotStatus) string {
	switch s {
	case ca.StatusActive:
		return "activated"
	case ca.StatusOld:
		return "retired"
	}
	return string(s) // prepared, dropped
}
