package badgerstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/tallyid/tally/ca/store"
)

// Join tokens are secrets: no error or log line contains one, and the database
// keeps only their SHA-256 (see tokenKey).

// CreateJoinToken stores t, or returns store.ErrAlreadyExists if a token with
// the same value is stored.
func (s *Store) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("badgerstore: create join token: %w", err)
	}
	if t.Token == "" {
		return errors.New("badgerstore: create join token: empty token")
	}
	stored := t
	stored.Token = ""
	v, err := json.Marshal(stored)
	if err != nil {
		return fmt.Errorf("badgerstore: create join token: %w", err)
	}
	err = s.update(func(txn *badger.Txn) error {
		found, err := exists(txn, tokenKey(t.Token))
		if err != nil {
			return err
		}
		if found {
			return store.ErrAlreadyExists
		}
		return txn.Set(tokenKey(t.Token), v)
	})
	if err != nil {
		return fmt.Errorf("badgerstore: create join token: %w", err)
	}
	return nil
}

// ConsumeJoinToken deletes and returns the token. A token is expired from
// its ExpiresAt on: then it is deleted all the same and store.ErrExpired
// returned. Of concurrent callers exactly one gets the token: the others'
// transactions conflict, are retried and find it gone (store.ErrNotFound).
func (s *Store) ConsumeJoinToken(ctx context.Context, token string, now time.Time) (store.JoinToken, error) {
	if err := ctx.Err(); err != nil {
		return store.JoinToken{}, fmt.Errorf("badgerstore: consume join token: %w", err)
	}
	var t store.JoinToken
	err := s.update(func(txn *badger.Txn) error {
		var err error
		if t, err = getToken(txn, tokenKey(token)); err != nil {
			return err
		}
		return txn.Delete(tokenKey(token))
	})
	if err != nil {
		return store.JoinToken{}, fmt.Errorf("badgerstore: consume join token: %w", err)
	}
	t.Token = token
	if expired(t, now) {
		return store.JoinToken{}, fmt.Errorf("badgerstore: consume join token: expired at %s: %w", t.ExpiresAt.Format(time.RFC3339), store.ErrExpired)
	}
	return t, nil
}

// PruneJoinTokens deletes the tokens expired at now and returns how many.
func (s *Store) PruneJoinTokens(ctx context.Context, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("badgerstore: prune join tokens: %w", err)
	}
	var n int
	err := s.update(func(txn *badger.Txn) error {
		n = 0
		var keys [][]byte
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixToken)})
		for it.Rewind(); it.Valid(); it.Next() {
			var t store.JoinToken
			item := it.Item()
			if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err != nil {
				it.Close()
				return fmt.Errorf("decode join token: %w", err)
			}
			if expired(t, now) {
				keys = append(keys, item.KeyCopy(nil))
			}
		}
		it.Close()
		for _, k := range keys {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("badgerstore: prune join tokens: %w", err)
	}
	return n, nil
}

func expired(t store.JoinToken, now time.Time) bool { return !now.Before(t.ExpiresAt) }

// getToken returns the token stored under key or store.ErrNotFound.
func getToken(txn *badger.Txn, key []byte) (store.JoinToken, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return store.JoinToken{}, store.ErrNotFound
	}
	if err != nil {
		return store.JoinToken{}, err
	}
	var t store.JoinToken
	err = item.Value(func(v []byte) error { return json.Unmarshal(v, &t) })
	if err != nil {
		return store.JoinToken{}, fmt.Errorf("decode join token: %w", err)
	}
	return t, nil
}
