package ca

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Rotation by hand: Prepare, Activate, Taint and Revoke. Each step takes the
// rotation lock, so it never interleaves with an automatic step, changes the
// slots of one kind, and is persisted (journal, then bundle) and logged at
// Info like an automatic step; on any error nothing changes. The automatic
// rotation (Run) carries on from whatever a step left: it never prepares a
// second key, activates a key prepared by hand on its own schedule, and
// prepares a successor again if a prepared key was revoked.

// signSlack is added to the moment a key was retired when bounding what it
// signed: it covers signing calls that picked the key up just before the
// handover.
const signSlack = time.Minute

// Prepare makes a new PREPARED key of kind and publishes it in the bundle at
// once, as the automatic rotation does at 1/2 of the active key's life. It
// signs nothing until Activate, or the automatic rotation at 5/6 of the
// active key's life, makes it active. Errors wrap ErrInvalidParams for an
// unknown kind and ErrConflict when a key of kind is already prepared.
func (a *Authority) Prepare(ctx context.Context, kind Kind) (SlotInfo, error) {
	return a.step(ctx, kind, func(slots []*slot, now time.Time, ch *changes) ([]*slot, *slot, error) {
		if _, p := find(slots); p != nil {
			return nil, nil, fmt.Errorf("%w: %s key %s is already prepared (since %s): activate or revoke it first",
				ErrConflict, kind, p.id, p.createdAt.UTC().Format(time.RFC3339))
		}
		s, err := a.newSlot(ctx, kind, now)
		if err != nil {
			return nil, nil, err
		}
		ch.created = append(ch.created, s.keyFile)
		ch.event(slog.LevelInfo, "ca key prepared by hand", s)
		return append(slots, s), s, nil
	})
}

// Activate makes the PREPARED key of kind ACTIVE, and the active one OLD: it
// stays in the bundle until it expires, so that what it signed still
// verifies. id names the prepared key; "" means the prepared one. So that a
// key reaches every agent and every open Workload API stream, and every
// consumer polling the bundle, before it signs anything, a key is refused
// until it has been in the bundle for two refresh hints (2 ×
// Config.RefreshHint: 10 minutes by default), as in the automatic rotation.
// Errors wrap ErrNotFound for an unknown id and ErrConflict for a key that
// is not prepared or was published too recently.
func (a *Authority) Activate(ctx context.Context, kind Kind, id string) (SlotInfo, error) {
	return a.step(ctx, kind, func(slots []*slot, now time.Time, ch *changes) ([]*slot, *slot, error) {
		active, prepared := find(slots)
		if id != "" {
			s, err := lookup(slots, kind, id)
			if err != nil {
				return nil, nil, err
			}
			if s.status != StatusPrepared {
				return nil, nil, fmt.Errorf("%w: %s key %s is %s: only a prepared key can be activated", ErrConflict, kind, id, s.status)
			}
		}
		if prepared == nil {
			return nil, nil, fmt.Errorf("%w: no %s key is prepared: prepare one first", ErrConflict, kind)
		}
		if from := a.activatableAt(prepared); now.Before(from) {
			return nil, nil, fmt.Errorf("%w: %s key %s was published at %s and can be activated from %s, "+
				"once consumers had two bundle refresh hints (%s) to fetch it", ErrConflict, kind, prepared.id,
				prepared.createdAt.UTC().Format(time.RFC3339), from.UTC().Format(time.RFC3339), a.cfg.RefreshHint)
		}
		if active == nil { // none usable: what the automatic step would do
			prepared.status, prepared.activatedAt = StatusActive, now
			ch.event(slog.LevelInfo, "ca key activated by hand", prepared)
		} else {
			ch.handOver(active, prepared, now, " by hand")
		}
		return slots, prepared, nil
	})
}

// Taint marks an OLD key of kind tainted: it stays in the bundle, and agents,
// told by TaintedX509IDs, re-mint with jitter every SVID it signed and stop
// serving those once the new ones arrive. id names the key; "" means the old
// one (an error if there are several). Tainting a tainted key changes
// nothing. The active key cannot be tainted: prepare and activate a new key
// first. JWT keys can be marked too, for the record; agents act on tainted
// X.509 keys. Errors wrap ErrNotFound for an unknown id, ErrInvalidParams
// for an ambiguous "", and ErrConflict for a key that is not old.
func (a *Authority) Taint(ctx context.Context, kind Kind, id string) (SlotInfo, error) {
	return a.step(ctx, kind, func(slots []*slot, now time.Time, ch *changes) ([]*slot, *slot, error) {
		var s *slot
		if id == "" {
			var old []*slot
			for _, s := range slots {
				if s.status == StatusOld {
					old = append(old, s)
				}
			}
			switch len(old) {
			case 0:
				return nil, nil, fmt.Errorf("%w: no old %s key to taint: prepare and activate a new key first, then taint the old one", ErrConflict, kind)
			case 1:
				s = old[0]
			default:
				ids := make([]string, len(old))
				for i, s := range old {
					ids[i] = s.id
				}
				return nil, nil, fmt.Errorf("%w: %d old %s keys (%s): name the one to taint", ErrInvalidParams, len(old), kind, strings.Join(ids, ", "))
			}
		} else {
			var err error
			if s, err = lookup(slots, kind, id); err != nil {
				return nil, nil, err
			}
		}
		switch s.status {
		case StatusActive:
			return nil, nil, fmt.Errorf("%w: %s key %s is active: prepare and activate a new key first, then taint it", ErrConflict, kind, s.id)
		case StatusPrepared:
			return nil, nil, fmt.Errorf("%w: %s key %s is prepared and has signed nothing: revoke it instead", ErrConflict, kind, s.id)
		}
		if s.tainted {
			return slots, s, nil
		}
		s.tainted, s.taintedAt = true, now
		ch.event(slog.LevelInfo, "ca key tainted by hand; agents re-mint what it signed", s)
		return slots, s, nil
	})
}

// Revoke removes a PREPARED or OLD key of kind from the bundle and the
// journal, bumps the bundle sequence and deletes its key file: nothing it
// signed verifies against the bundle any more, and the API's caches of
// verified certificates, keyed by the bundle sequence, forget what it
// signed. The returned slot has status StatusRevoked.
//
// The active key cannot be revoked: prepare and activate a new key first. A
// prepared key has signed nothing and can always be revoked. An old key is
// refused, unless force, while SVIDs it signed may be unexpired: until the
// earlier of its NotAfter and the moment it was retired plus CATTL/6, the
// longest an SVID lives, plus a minute for signing calls in flight then (its
// NotAfter if the journal does not record when it was retired). Until then
// an X.509 key signed by an upstream CA is refused even with force: the
// bundle holds the upstream root, not the key, so revoking it could not
// untrust what it signed.
//
// Errors wrap ErrInvalidParams for an empty id, ErrNotFound for an unknown
// one, and ErrConflict for a refusal.
func (a *Authority) Revoke(ctx context.Context, kind Kind, id string, force bool) (SlotInfo, error) {
	if id == "" {
		if err := checkKind(kind); err != nil {
			return SlotInfo{}, err
		}
		return SlotInfo{}, fmt.Errorf("%w: the id of the %s key to revoke is required", ErrInvalidParams, kind)
	}
	return a.step(ctx, kind, func(slots []*slot, now time.Time, ch *changes) ([]*slot, *slot, error) {
		s, err := lookup(slots, kind, id)
		if err != nil {
			return nil, nil, err
		}
		level, msg := slog.LevelInfo, "ca key revoked by hand; dropped from bundle"
		switch s.status {
		case StatusActive:
			return nil, nil, fmt.Errorf("%w: %s key %s is active: prepare and activate a new key first", ErrConflict, kind, id)
		case StatusOld:
			until := a.signedUntil(s)
			if !now.Before(until) {
				break
			}
			if !force {
				return nil, nil, fmt.Errorf("%w: %s key %s signed SVIDs that may be valid until %s: wait until then, "+
					"or force it (those SVIDs stop verifying at once)", ErrConflict, kind, id, until.UTC().Format(time.RFC3339))
			}
			if len(s.upstream) > 0 {
				return nil, nil, fmt.Errorf("%w: x509 key %s is signed by the upstream CA, whose root is what the bundle holds: "+
					"what it signed verifies until %s whatever is done here; revoke its certificate at the upstream CA, or wait",
					ErrConflict, id, until.UTC().Format(time.RFC3339))
			}
			level, msg = slog.LevelWarn, "ca key revoked by hand while SVIDs it signed may be unexpired; dropped from bundle"
		}
		kept := slices.DeleteFunc(slots, func(o *slot) bool { return o == s })
		ch.obsolete = append(ch.obsolete, s.keyFile)
		s.status = StatusRevoked
		ch.event(level, msg, s)
		return kept, s, nil
	})
}

// signedUntil is when the last SVID slot s signed expires at the latest:
// the zero time for a prepared key, which signed nothing. An SVID ends by its
// key's NotAfter and lives at most CATTL/6, so for an old key it is the
// earlier of its NotAfter and the moment it was retired plus CATTL/6 (plus
// signSlack); its NotAfter if the journal does not record when it was
// retired.
func (a *Authority) signedUntil(s *slot) time.Time {
	switch {
	case s.status == StatusPrepared:
		return time.Time{}
	case s.status == StatusOld && !s.retiredAt.IsZero():
		if t := s.retiredAt.Add(a.cfg.maxSVIDTTL() + signSlack); t.Before(s.notAfter) {
			return t
		}
	}
	return s.notAfter
}

// TaintedX509IDs returns the IDs (hex subject key IDs) of the tainted X.509
// keys still in the bundle, oldest first, or nil. The receivers of
// SubscribeBundle get the bundle again, with the same sequence number, when
// this set changes without the bundle changing. Safe for concurrent use.
func (a *Authority) TaintedX509IDs() []string {
	var ids []string
	for _, s := range *a.infos.Load() {
		if s.Kind == KindX509 && s.Tainted {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

// step applies fn to a copy of the slots of kind, with a.mu held, and
// persists the result unless fn changed nothing. fn returns the new slots
// and the slot to report; on error, the key files it created are removed.
func (a *Authority) step(ctx context.Context, kind Kind, fn func(slots []*slot, now time.Time, ch *changes) ([]*slot, *slot, error)) (SlotInfo, error) {
	if err := checkKind(kind); err != nil {
		return SlotInfo{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now().UTC()
	var ch changes
	slots, s, err := fn(cloneSlots(a.st.slots(kind)), now, &ch)
	if err != nil {
		a.removeKeys(ch.created)
		return SlotInfo{}, err
	}
	info := s.info()
	if len(ch.events) == 0 {
		return info, nil
	}
	next := &state{seq: a.st.seq, x509: a.st.x509, jwt: a.st.jwt}
	next.setSlots(kind, slots)
	if err := a.persist(ctx, next, ch); err != nil {
		return SlotInfo{}, err
	}
	return info, nil
}

// activatableAt is when prepared may become active: once consumers had two
// refresh hints to fetch it.
func (a *Authority) activatableAt(prepared *slot) time.Time {
	return prepared.createdAt.Add(2 * a.cfg.RefreshHint)
}

// lookup returns the slot of kind named id.
func lookup(slots []*slot, kind Kind, id string) (*slot, error) {
	for _, s := range slots {
		if s.id == id {
			return s, nil
		}
	}
	return nil, fmt.Errorf("%w: no %s key %q in the bundle", ErrNotFound, kind, id)
}

func checkKind(kind Kind) error {
	if kind != KindX509 && kind != KindJWT {
		return fmt.Errorf("%w: unknown key kind %q (want %s or %s)", ErrInvalidParams, kind, KindX509, KindJWT)
	}
	return nil
}
