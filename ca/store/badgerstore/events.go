package badgerstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/tallyid/tally/ca/store"
)

// pruneChunk is the number of events deleted per transaction by PruneEvents.
const pruneChunk = 10_000

// Revision returns the revision of the newest committed event, 0 on a new
// store. Events up to it are visible to Events once Revision returns it.
func (s *Store) Revision(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("badgerstore: revision: %w", err)
	}
	return s.rev.Load(), nil
}

// Events returns the events with revision > after, oldest first, at most
// limit (0: all). Revisions are consecutive, so a caller that asks again
// after the last revision it got misses nothing. It returns
// store.ErrCompacted if PruneEvents dropped an event newer than after.
func (s *Store) Events(ctx context.Context, after uint64, limit int) ([]store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("badgerstore: events: %w", err)
	}
	var out []store.Event
	err := s.view(func(txn *badger.Txn) error {
		pruned, err := getUint64(txn, keyPruned)
		if err != nil {
			return err
		}
		if after < pruned {
			return fmt.Errorf("events after %d: oldest kept is %d: %w", after, pruned+1, store.ErrCompacted)
		}
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 100, Prefix: []byte(prefixEvent)})
		defer it.Close()
		for it.Seek(eventKey(after + 1)); it.Valid(); it.Next() {
			var ev store.Event
			item := it.Item()
			if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &ev) }); err != nil {
				return fmt.Errorf("decode event %d: %w", revisionOf(item.Key()), err)
			}
			out = append(out, ev)
			if limit > 0 && len(out) == limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("badgerstore: %w", err)
	}
	return out, nil
}

// PruneEvents drops the events with revision < before, always keeping the
// newest. It deletes in chunks, oldest first, each chunk with the marker that
// makes Events return store.ErrCompacted, so a crash leaves a consistent log.
func (s *Store) PruneEvents(ctx context.Context, before uint64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("badgerstore: prune events: %w", err)
	}
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()

	keep := min(before, s.rev.Load()) // oldest revision to keep
	if keep <= 1 {
		return nil
	}
	last := keep - 1
	var pruned uint64
	if err := s.db.View(func(txn *badger.Txn) error {
		var err error
		pruned, err = getUint64(txn, keyPruned)
		return err
	}); err != nil {
		return fmt.Errorf("badgerstore: prune events: %w", err)
	}
	for pruned < last {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("badgerstore: prune events: %w", err)
		}
		to := min(last, pruned+pruneChunk)
		err := s.update(func(txn *badger.Txn) error {
			for rev := pruned + 1; rev <= to; rev++ {
				if err := txn.Delete(eventKey(rev)); err != nil {
					return err
				}
			}
			return txn.Set([]byte(keyPruned), encodeUint64(to))
		})
		if err != nil {
			return fmt.Errorf("badgerstore: prune events before %d: %w", before, err)
		}
		pruned = to
	}
	return nil
}

// putEvent writes ev under its revision.
func putEvent(w *writes, ev store.Event) error {
	v, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event %d: %w", ev.Revision, err)
	}
	w.set(eventKey(ev.Revision), v)
	return nil
}
