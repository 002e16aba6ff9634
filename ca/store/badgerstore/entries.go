package badgerstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/tallyid/tally/ca/store"
)

// CreateEntries inserts all entries or none, however many (see commit). It
// fails with store.ErrAlreadyExists, naming the entry, if an ID is stored or
// repeated in the batch, or if an entry equals a stored or earlier one in
// spiffe_id, parent_id and selector set. The returned entries carry their revisions,
// consecutive in batch order; CreatedAt is kept as given.
func (s *Store) CreateEntries(ctx context.Context, entries []store.Entry) ([]store.Entry, error) {
	if len(entries) == 0 {
		return []store.Entry{}, ctx.Err()
	}
	out, err := s.write(ctx, "create entries", store.EntryWrites{Create: entries})
	return out.Create, err
}

// UpdateEntry replaces the entry with e.ID, keeping the stored CreatedAt. It
// returns store.ErrNotFound if there is no such entry and
// store.ErrAlreadyExists if e would equal another entry.
func (s *Store) UpdateEntry(ctx context.Context, e store.Entry) (store.Entry, error) {
	out, err := s.write(ctx, "update entry", store.EntryWrites{Update: []store.Entry{e}})
	if err != nil {
		return store.Entry{}, err
	}
	return out.Update[0], nil
}

// DeleteEntries deletes all entries with the given IDs or none (see
// commit): store.ErrNotFound, naming the ID, if one is absent. An ID listed
// twice is deleted once.
func (s *Store) DeleteEntries(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return ctx.Err()
	}
	_, err := s.write(ctx, "delete entries", store.EntryWrites{Delete: ids})
	return err
}

// WriteEntries applies w's deletions, then its updates, then its creations,
// all or none, in one commit; each later step sees the earlier ones, so an
// entry may be deleted and an equal one created in the same call. The rules
// are those of DeleteEntries, UpdateEntry and CreateEntries.
func (s *Store) WriteEntries(ctx context.Context, w store.EntryWrites) (store.EntryWrites, error) {
	return s.write(ctx, "write entries", w)
}

// write is every entry mutation: it computes the writes and events of w
// over one snapshot plus what w itself has changed so far (pending), then
// commits them at once.
func (s *Store) write(ctx context.Context, what string, in store.EntryWrites) (store.EntryWrites, error) {
	if err := ctx.Err(); err != nil {
		return store.EntryWrites{}, fmt.Errorf("badgerstore: %s: %w", what, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	rev := s.rev.Load()
	out := store.EntryWrites{Delete: in.Delete}
	w := &writes{}
	// s.mu is held, so no intent is being applied: read without s.applying.
	err := s.db.View(func(txn *badger.Txn) error {
		p := pending{txn: txn, entries: map[string]*store.Entry{}, dups: map[string]string{}, created: map[string]bool{}}
		event := func(ev store.Event) error {
			rev++
			ev.Revision = rev // a deleted entry keeps the revision it had
			return putEvent(w, ev)
		}
		for _, id := range in.Delete {
			if e, ok := p.entries[id]; ok && e == nil {
				continue // listed twice: deleted once
			}
			e, err := p.entry(id)
			if err != nil {
				return err
			}
			deleteEntry(w, e)
			p.entries[id] = nil
			p.dups[string(dupKey(e))] = ""
			if err := event(store.Event{Type: store.EventDeleted, Entry: e}); err != nil {
				return err
			}
		}
		for _, e := range in.Update {
			prev, err := p.entry(e.ID)
			if err != nil {
				return err
			}
			dk := dupKey(e)
			other, err := p.dup(dk)
			if err != nil {
				return err
			}
			if other != "" && other != e.ID {
				return fmt.Errorf("entry %q equals entry %q: %w", e.ID, other, store.ErrAlreadyExists)
			}
			e.CreatedAt = prev.CreatedAt
			e.Revision = rev + 1
			deleteEntry(w, prev)
			p.dups[string(dupKey(prev))] = ""
			if err := putEntry(w, e, dk); err != nil {
				return err
			}
			p.entries[e.ID], p.dups[string(dk)] = &e, e.ID
			if err := event(store.Event{Type: store.EventUpdated, Entry: e, Previous: &prev}); err != nil {
				return err
			}
			out.Update = append(out.Update, e)
		}
		for i, e := range in.Create {
			if e.ID == "" {
				return fmt.Errorf("entry %d has no id", i)
			}
			if p.created[e.ID] {
				return fmt.Errorf("entry %q is in the batch twice: %w", e.ID, store.ErrAlreadyExists)
			}
			if _, err := p.entry(e.ID); err == nil {
				return fmt.Errorf("entry %q: id is taken: %w", e.ID, store.ErrAlreadyExists)
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			dk := dupKey(e)
			other, err := p.dup(dk)
			if err != nil {
				return err
			}
			if other != "" && p.created[other] {
				return fmt.Errorf("entry %q equals entry %q of the batch: %w", e.ID, other, store.ErrAlreadyExists)
			}
			if other != "" {
				return fmt.Errorf("entry %q equals stored entry %q: %w", e.ID, other, store.ErrAlreadyExists)
			}
			e.Revision = rev + 1
			if err := putEntry(w, e, dk); err != nil {
				return err
			}
			p.entries[e.ID], p.dups[string(dk)], p.created[e.ID] = &e, e.ID, true
			if err := event(store.Event{Type: store.EventCreated, Entry: e}); err != nil {
				return err
			}
			out.Create = append(out.Create, e)
		}
		w.set([]byte(keyRevision), encodeUint64(rev))
		return nil
	})
	if err == nil {
		err = s.commit(w)
	}
	if errors.Is(err, badger.ErrTxnTooBig) {
		n := len(in.Delete) + len(in.Update) + len(in.Create)
		return store.EntryWrites{}, fmt.Errorf("badgerstore: %s: a batch of %d entries is too big, split it: %w", what, n, err)
	}
	if err != nil {
		return store.EntryWrites{}, fmt.Errorf("badgerstore: %s: %w", what, err)
	}
	s.rev.Store(rev)
	return out, nil
}

// pending is the entry table as a write in progress sees it: the snapshot
// txn overlaid with the batch's own changes so far.
type pending struct {
	txn     *badger.Txn
	entries map[string]*store.Entry // by ID; nil: deleted by the batch
	dups    map[string]string       // duplicate key → entry ID; "": freed by the batch
	created map[string]bool         // IDs the batch creates
}

func (p *pending) entry(id string) (store.Entry, error) {
	if e, ok := p.entries[id]; ok {
		if e == nil {
			return store.Entry{}, fmt.Errorf("entry %q: %w", id, store.ErrNotFound)
		}
		return *e, nil
	}
	return getEntry(p.txn, id)
}

func (p *pending) dup(dk []byte) (string, error) {
	if id, ok := p.dups[string(dk)]; ok {
		return id, nil
	}
	return equalEntryID(p.txn, dk)
}

// GetEntry returns the entry or store.ErrNotFound.
func (s *Store) GetEntry(ctx context.Context, id string) (store.Entry, error) {
	if err := ctx.Err(); err != nil {
		return store.Entry{}, fmt.Errorf("badgerstore: get entry %q: %w", id, err)
	}
	var e store.Entry
	err := s.view(func(txn *badger.Txn) error {
		var err error
		e, err = getEntry(txn, id)
		return err
	})
	if err != nil {
		return store.Entry{}, fmt.Errorf("badgerstore: %w", err)
	}
	return e, nil
}

// ListEntries returns the entries matching every non-zero field of f, ordered
// by ID, from one consistent snapshot. Filters are answered from indexes:
// with several, their sorted ID lists are intersected by leapfrogging, so the
// cost follows the result size, not the table size.
func (s *Store) ListEntries(ctx context.Context, f store.EntryFilter) ([]store.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("badgerstore: list entries: %w", err)
	}
	var out []store.Entry
	err := s.view(func(txn *badger.Txn) error {
		var prefixes [][]byte
		if f.SPIFFEID != "" {
			prefixes = append(prefixes, spiffePrefix(f.SPIFFEID))
		}
		if f.ParentID != "" {
			prefixes = append(prefixes, parentPrefix(f.ParentID))
		}
		for _, sel := range selectorSet(f.Selectors) {
			prefixes = append(prefixes, selectorPrefix(sel))
		}
		if len(prefixes) == 0 {
			var err error
			out, err = scanEntries(txn, f.AfterID, f.Limit)
			return err
		}
		return intersect(txn, prefixes, f.AfterID, func(id string) (bool, error) {
			e, err := getEntry(txn, id)
			if err != nil {
				return false, err
			}
			out = append(out, e)
			return f.Limit <= 0 || len(out) < f.Limit, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("badgerstore: list entries: %w", err)
	}
	return out, nil
}

// scanEntries reads entries in ID order after afterID, at most limit (0: all).
func scanEntries(txn *badger.Txn, afterID string, limit int) ([]store.Entry, error) {
	prefix := []byte(prefixEntry)
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 100, Prefix: prefix})
	defer it.Close()
	var out []store.Entry
	for it.Seek(entryKey(afterID)); it.Valid(); it.Next() {
		item := it.Item()
		if afterID != "" && string(item.Key()[len(prefix):]) == afterID {
			continue
		}
		var e store.Entry
		if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &e) }); err != nil {
			return nil, fmt.Errorf("decode %s: %w", item.Key(), err)
		}
		out = append(out, e)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out, nil
}

// intersect calls emit, in ascending order, with every ID after afterID that
// follows each of the index prefixes, until emit returns false.
func intersect(txn *badger.Txn, prefixes [][]byte, afterID string, emit func(id string) (bool, error)) error {
	its := make([]*badger.Iterator, len(prefixes))
	for i, p := range prefixes {
		its[i] = txn.NewIterator(badger.IteratorOptions{Prefix: p})
	}
	defer func() {
		for _, it := range its {
			it.Close()
		}
	}()
	// seek positions iterator i at the first ID >= id.
	seek := func(i int, id string) (string, bool) {
		it, p := its[i], prefixes[i]
		it.Seek(indexKey(p, id))
		if !it.Valid() {
			return "", false
		}
		return string(it.Item().Key()[len(p):]), true
	}
	candidate := ""
	if afterID != "" {
		candidate = afterID + "\x00" // the least ID greater than afterID
	}
	for {
		// Leapfrog: move each index to the candidate; one that lands
		// further raises the candidate, until all agree.
		for i, agree := 0, 0; agree < len(its); i = (i + 1) % len(its) {
			id, ok := seek(i, candidate)
			if !ok {
				return nil
			}
			if id == candidate {
				agree++
			} else {
				candidate, agree = id, 1
			}
		}
		more, err := emit(candidate)
		if err != nil || !more {
			return err
		}
		candidate += "\x00"
	}
}

// equalEntryID returns the ID of the entry with duplicate key dk, or "".
func equalEntryID(txn *badger.Txn, dk []byte) (string, error) {
	item, err := txn.Get(dk)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	v, err := item.ValueCopy(nil)
	return string(v), err
}

// getEntry returns the stored entry or an error wrapping store.ErrNotFound.
func getEntry(txn *badger.Txn, id string) (store.Entry, error) {
	item, err := txn.Get(entryKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return store.Entry{}, fmt.Errorf("entry %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Entry{}, fmt.Errorf("entry %q: %w", id, err)
	}
	var e store.Entry
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &e) }); err != nil {
		return store.Entry{}, fmt.Errorf("decode entry %q: %w", id, err)
	}
	return e, nil
}

// putEntry writes e with its index keys; dk is dupKey(e).
func putEntry(w *writes, e store.Entry, dk []byte) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode entry %q: %w", e.ID, err)
	}
	w.set(entryKey(e.ID), v)
	w.set(dk, []byte(e.ID))
	for _, k := range indexKeys(e) {
		w.set(k, nil)
	}
	return nil
}

// deleteEntry removes the stored entry e with its index keys.
func deleteEntry(w *writes, e store.Entry) {
	for _, k := range append(indexKeys(e), entryKey(e.ID), dupKey(e)) {
		w.del(k)
	}
}

// indexKeys are the filter index keys of e.
func indexKeys(e store.Entry) [][]byte {
	keys := [][]byte{
		indexKey(parentPrefix(e.ParentID), e.ID),
		indexKey(spiffePrefix(e.SPIFFEID), e.ID),
	}
	for _, sel := range selectorSet(e.Selectors) {
		keys = append(keys, indexKey(selectorPrefix(sel), e.ID))
	}
	return keys
}
