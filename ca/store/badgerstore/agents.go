package badgerstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/tallyid/tally/ca/store"
)

// PutAgent creates or replaces the agent with a.ID.
func (s *Store) PutAgent(ctx context.Context, a store.Agent) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("badgerstore: put agent %q: %w", a.ID, err)
	}
	if a.ID == "" {
		return errors.New("badgerstore: put agent: no id")
	}
	v, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("badgerstore: put agent %q: %w", a.ID, err)
	}
	if err := s.update(func(txn *badger.Txn) error { return txn.Set(agentKey(a.ID), v) }); err != nil {
		return fmt.Errorf("badgerstore: put agent %q: %w", a.ID, err)
	}
	return nil
}

// GetAgent returns the agent or store.ErrNotFound.
func (s *Store) GetAgent(ctx context.Context, id string) (store.Agent, error) {
	if err := ctx.Err(); err != nil {
		return store.Agent{}, fmt.Errorf("badgerstore: get agent %q: %w", id, err)
	}
	var a store.Agent
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(agentKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &a) })
	})
	if err != nil {
		return store.Agent{}, fmt.Errorf("badgerstore: get agent %q: %w", id, err)
	}
	return a, nil
}

// ListAgents returns all agents ordered by ID.
func (s *Store) ListAgents(ctx context.Context) ([]store.Agent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("badgerstore: list agents: %w", err)
	}
	var out []store.Agent
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 100, Prefix: []byte(prefixAgent)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var a store.Agent
			item := it.Item()
			if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &a) }); err != nil {
				return fmt.Errorf("decode %s: %w", item.Key(), err)
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("badgerstore: list agents: %w", err)
	}
	return out, nil
}

// DeleteAgent removes the agent, or returns store.ErrNotFound.
func (s *Store) DeleteAgent(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("badgerstore: delete agent %q: %w", id, err)
	}
	err := s.update(func(txn *badger.Txn) error {
		found, err := exists(txn, agentKey(id))
		if err != nil {
			return err
		}
		if !found {
			return store.ErrNotFound
		}
		return txn.Delete(agentKey(id))
	})
	if err != nil {
		return fmt.Errorf("badgerstore: delete agent %q: %w", id, err)
	}
	return nil
}
