package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
)

const (
	// maxRotationWait bounds the sleep between two rotation checks, so that
	// a suspended machine or a stepped wall clock is noticed soon.
	maxRotationWait = time.Minute
	// minRetry and maxRetry bound the backoff after a failed step.
	minRetry = time.Second
	maxRetry = time.Minute
)

// Run rotates the keys until ctx is done, then returns nil. For each kind,
// independently: when the ACTIVE key has lived 1/2 of its lifetime a new key
// is PREPARED and published in the bundle; at 5/6 the prepared key becomes
// ACTIVE and the previous one OLD; an OLD key stays in the bundle until it
// expires, since nothing it signed outlives it. Every step is persisted
// (journal, then bundle) and logged. A failed step is retried with
// exponential backoff; the current keys keep signing meanwhile. Steps by
// hand (Prepare, Activate, Taint, Revoke) may come in between: the schedule
// follows the keys they leave.
func (a *Authority) Run(ctx context.Context) error {
	retry := backoff.New(minRetry, maxRetry)
	for {
		next, err := a.tick(ctx)
		wait := next.Sub(a.clock.Now())
		if err != nil {
			wait = retry.Next()
			if ctx.Err() == nil {
				a.log.Error("ca rotation step failed", logkey.Error, err, logkey.RetryIn, wait)
			}
		} else {
			retry.Reset()
		}
		wait = max(wait, 0)
		t := a.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

// slotEvent is a slot change to log and report once persisted.
type slotEvent struct {
	msg   string
	level slog.Level
	info  SlotInfo
}

// changes collects what one tick did.
type changes struct {
	events   []slotEvent
	created  []string // key files written: removed if the change is not persisted
	obsolete []string // key files no longer needed: removed once it is
}

func (c *changes) event(level slog.Level, msg string, s *slot) {
	c.events = append(c.events, slotEvent{msg: msg, level: level, info: s.info()})
}

// tick performs every rotation step due now, persists the result and returns
// when the next step is due. A kind whose step fails is left unchanged; the
// other kind still advances.
func (a *Authority) tick(ctx context.Context) (time.Time, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now().UTC()
	next := &state{seq: a.st.seq}
	var all changes
	var errs []error
	for _, k := range kinds() {
		slots, ch, err := a.advance(ctx, k, cloneSlots(a.st.slots(k)), now)
		if err != nil {
			a.removeKeys(ch.created)
			errs = append(errs, err)
			next.setSlots(k, a.st.slots(k))
			continue
		}
		next.setSlots(k, slots)
		all.events = append(all.events, ch.events...)
		all.created = append(all.created, ch.created...)
		all.obsolete = append(all.obsolete, ch.obsolete...)
	}
	if len(all.events) > 0 {
		if err := a.persist(ctx, next, all); err != nil {
			errs = append(errs, err)
		}
	} else if a.bundleDirty {
		if err := a.saveBundle(ctx, a.bundle.Load()); err != nil {
			errs = append(errs, err)
		}
	}
	return a.nextStep(a.st, now), errors.Join(errs...)
}

// advance applies the steps due at now to the slots of one kind, which the
// caller owns.
func (a *Authority) advance(ctx context.Context, kind Kind, slots []*slot, now time.Time) ([]*slot, changes, error) {
	var ch changes
	bootstrap := len(slots) == 0

	// Drop what expired. Nothing a slot signed outlives it.
	kept := slots[:0]
	for _, s := range slots {
		if now.Before(s.notAfter) {
			kept = append(kept, s)
			continue
		}
		ch.obsolete = append(ch.obsolete, s.keyFile)
		level, msg := slog.LevelInfo, "ca key expired; dropped from bundle"
		if s.status != StatusOld {
			level, msg = slog.LevelWarn, "ca key expired before it could be rotated; dropped from bundle"
		}
		s.status = StatusDropped
		ch.event(level, msg, s)
	}
	slots = kept
	active, prepared := find(slots)

	// No usable active key: activate the prepared one, or a new one.
	if active == nil {
		if prepared == nil {
			s, err := a.newSlot(ctx, kind, now)
			if err != nil {
				return nil, ch, err
			}
			ch.created = append(ch.created, s.keyFile)
			ch.event(slog.LevelInfo, "ca key prepared", s)
			slots = append(slots, s)
			prepared = s
		}
		level, msg := slog.LevelInfo, "ca key activated"
		if !bootstrap && now.Before(prepared.createdAt.Add(2*a.cfg.RefreshHint)) {
			level, msg = slog.LevelWarn, "ca key activated before consumers could fetch it; no key was usable"
		}
		prepared.status, prepared.activatedAt = StatusActive, now
		ch.event(level, msg, prepared)
		active, prepared = prepared, nil
	}

	// At 1/2 of the active key's life, prepare its successor.
	if prepared == nil && !now.Before(active.prepareAt()) {
		s, err := a.newSlot(ctx, kind, now)
		if err != nil {
			return nil, ch, err
		}
		ch.created = append(ch.created, s.keyFile)
		ch.event(slog.LevelInfo, "ca key prepared", s)
		slots = append(slots, s)
		prepared = s
	}

	// At 5/6, hand over. The old key stays in the bundle until it expires.
	if prepared != nil && !now.Before(a.activateAt(active, prepared)) {
		ch.handOver(active, prepared, now, "")
	}
	return slots, ch, nil
}

// handOver makes prepared the active slot and active an old one, as of now;
// how ("" or " by hand") goes in the log lines.
func (c *changes) handOver(active, prepared *slot, now time.Time, how string) {
	c.obsolete = append(c.obsolete, active.keyFile)
	active.status, active.keyFile, active.signer, active.retiredAt = StatusOld, "", nil, now
	c.event(slog.LevelInfo, "ca key retired"+how+"; kept in bundle until it expires", active)
	prepared.status, prepared.activatedAt = StatusActive, now
	c.event(slog.LevelInfo, "ca key activated"+how, prepared)
}

// activateAt is when prepared replaces active: at 5/6 of active's life, and
// not before consumers had two refresh hints to fetch prepared.
func (a *Authority) activateAt(active, prepared *slot) time.Time {
	t := active.retireAt()
	if p := a.activatableAt(prepared); p.After(t) {
		return p
	}
	return t
}

func (a *Authority) newSlot(ctx context.Context, kind Kind, now time.Time) (*slot, error) {
	if kind == KindX509 && a.cfg.StepCA != nil {
		return a.newStepCASlot(ctx, now)
	}
	if kind == KindX509 {
		return a.newX509Slot(now)
	}
	return a.newJWTSlot(now)
}

// persist saves next (journal first, then bundle), installs it, and reports
// the changes. If the journal cannot be saved nothing changes. Callers hold
// a.mu.
func (a *Authority) persist(ctx context.Context, next *state, ch changes) error {
	b := a.buildBundle(next)
	bundleChanged := !b.Equal(a.bundle.Load())
	if bundleChanged {
		next.seq++
		b.SetSequenceNumber(next.seq)
	}
	sg, err := a.signersFor(ctx, next)
	if err != nil {
		a.removeKeys(ch.created)
		return err
	}
	data, err := marshalJournal(a.td, next)
	if err == nil {
		err = a.cfg.Journal.SaveJournal(ctx, data)
	}
	if err != nil {
		a.removeKeys(ch.created)
		return fmt.Errorf("ca: save journal: %w", err)
	}

	a.install(next, b, sg)
	a.removeKeys(ch.obsolete)
	for _, e := range ch.events {
		a.log.Log(ctx, e.level, e.msg, logkey.Kind, e.info.Kind, logkey.ID, e.info.ID, logkey.NotAfter, e.info.NotAfter)
	}
	// Subscribers get the bundle on every slot change, the same bundle too
	// (an activation, a taint): they may read Slots and TaintedX509IDs.
	a.subs.publish(b)
	if bundleChanged {
		a.bundleDirty = true
		a.log.Info("ca bundle updated", logkey.Sequence, next.seq)
	}
	if a.bundleDirty {
		return a.saveBundle(ctx, b)
	}
	return nil
}

// nextStep is when the next rotation step of st is due, at most
// maxRotationWait after now.
func (a *Authority) nextStep(st *state, now time.Time) time.Time {
	next := now.Add(maxRotationWait)
	earlier := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	for _, k := range kinds() {
		slots := st.slots(k)
		for _, s := range slots {
			earlier(s.notAfter)
		}
		switch active, prepared := find(slots); {
		case active == nil:
			earlier(now)
		case prepared == nil:
			earlier(active.prepareAt())
		default:
			earlier(a.activateAt(active, prepared))
		}
	}
	return next
}

func cloneSlots(src []*slot) []*slot {
	dst := make([]*slot, len(src))
	for i, s := range src {
		cp := *s
		dst[i] = &cp
	}
	return dst
}
