package badgerstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/tallyid/tally/ca/store"
)

// LoadJournal returns the CA journal, or store.ErrNotFound on a new store.
func (s *Store) LoadJournal(ctx context.Context) ([]byte, error) {
	return s.load(ctx, keyJournal, "journal")
}

// SaveJournal replaces the CA journal.
func (s *Store) SaveJournal(ctx context.Context, journal []byte) error {
	return s.save(ctx, keyJournal, "journal", journal)
}

// LoadBundle returns the stored trust bundle, or store.ErrNotFound.
func (s *Store) LoadBundle(ctx context.Context) ([]byte, error) {
	return s.load(ctx, keyBundle, "bundle")
}

// SaveBundle replaces the stored trust bundle.
func (s *Store) SaveBundle(ctx context.Context, bundle []byte) error {
	return s.save(ctx, keyBundle, "bundle", bundle)
}

func (s *Store) load(ctx context.Context, key, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("badgerstore: load %s: %w", name, err)
	}
	var v []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("badgerstore: load %s: %w", name, err)
	}
	return v, nil
}

func (s *Store) save(ctx context.Context, key, name string, v []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("badgerstore: save %s: %w", name, err)
	}
	if err := s.update(func(txn *badger.Txn) error { return txn.Set([]byte(key), v) }); err != nil {
		return fmt.Errorf("badgerstore: save %s: %w", name, err)
	}
	return nil
}
