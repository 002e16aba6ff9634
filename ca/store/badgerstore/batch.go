package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/tallyid/tally/internal/logkey"
)

// keyIntent holds a write batch too big for one transaction while it is
// being applied; see commit.
const keyIntent = "m/intent"

// writes is a batch of key writes, recorded by the entry mutations (which
// read in their own snapshot) and then committed atomically by commit.
type writes struct {
	ops []write
}

type write struct {
	key, value []byte
	delete     bool
}

func (w *writes) set(key, value []byte) { w.ops = append(w.ops, write{key: key, value: value}) }
func (w *writes) del(key []byte)        { w.ops = append(w.ops, write{key: key, delete: true}) }

// commit writes w all or nothing, synced, in one transaction when it fits.
//
// A batch beyond one transaction (badger bounds a transaction by the
// memtable size) is first saved whole as one value under keyIntent (a large
// value lives in the value log and counts only as a pointer against the
// transaction), then applied over several transactions, and keyIntent is
// deleted with the last one. Open finishes an intent that a crash
// interrupted, so the batch is never half there after a restart; while it
// is applied, readers wait on s.applying so that they never see half of it.
// The caller holds s.mu, so no other entry mutation runs meanwhile.
//
// If applying fails, the intent stays, and so does what was applied of it:
// every later commit refuses, because a write computed over that partial
// state would be overwritten when Open finishes the intent. A restart (Open)
// completes the batch.
func (s *Store) commit(w *writes) error {
	if s.unfinished != nil {
		return s.unfinished
	}
	err := s.db.Update(func(txn *badger.Txn) error { return w.applyTo(txn) })
	if !errors.Is(err, badger.ErrTxnTooBig) {
		return err
	}
	intent := w.encode()
	if len(intent) > s.maxIntent {
		return fmt.Errorf("%d bytes of writes, more than the %d one batch may have: %w", len(intent), s.maxIntent, badger.ErrTxnTooBig)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(keyIntent), intent) }); err != nil {
		return fmt.Errorf("save write intent: %w", err)
	}
	s.applying.Lock()
	defer s.applying.Unlock()
	if err := s.applyChunked(w); err != nil {
		s.unfinished = fmt.Errorf("a batch was left half applied; restart to finish it: %w", err)
		s.log.Error("batch write failed half way; entry writes are refused until a restart finishes it", logkey.Error, err)
		return s.unfinished
	}
	return nil
}

// applyTo performs every write in txn.
func (w *writes) applyTo(txn *badger.Txn) error {
	for _, op := range w.ops {
		if err := op.applyTo(txn); err != nil {
			return err
		}
	}
	return nil
}

func (op write) applyTo(txn *badger.Txn) error {
	if op.delete {
		return txn.Delete(op.key)
	}
	return txn.Set(op.key, op.value)
}

// applyChunked performs w's writes in as many transactions as they need,
// deleting keyIntent in the last. Every write sets or deletes a whole key, so
// applying w again over a partial application gives the same result.
func (s *Store) applyChunked(w *writes) error {
	ops := append(w.ops[:len(w.ops):len(w.ops)], write{key: []byte(keyIntent), delete: true})
	for len(ops) > 0 {
		txn := s.db.NewTransaction(true)
		n := 0
		for _, op := range ops {
			err := op.applyTo(txn)
			if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
				break
			}
			if err != nil {
				txn.Discard()
				return fmt.Errorf("apply write intent: %w", err)
			}
			n++
		}
		if err := txn.Commit(); err != nil {
			return fmt.Errorf("apply write intent: %w", err)
		}
		ops = ops[n:]
	}
	return nil
}

// finishIntent applies an intent left by a crash in commit, if any, and
// returns the number of writes it applied.
func (s *Store) finishIntent() (int, error) {
	var intent []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyIntent))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		intent, err = item.ValueCopy(nil)
		return err
	})
	if err != nil || intent == nil {
		return 0, err
	}
	w, err := decodeWrites(intent)
	if err != nil {
		return 0, fmt.Errorf("write intent: %w", err)
	}
	return len(w.ops), s.applyChunked(w)
}

// encode serialises w: per write a flag byte (1: delete), the key and, for a
// set, the value, each as a uvarint length and the bytes.
func (w *writes) encode() []byte {
	n := 0
	for _, op := range w.ops {
		n += 1 + 2*binary.MaxVarintLen32 + len(op.key) + len(op.value)
	}
	b := make([]byte, 0, n)
	for _, op := range w.ops {
		if op.delete {
			b = append(b, 1)
			b = appendBytes(b, op.key)
			continue
		}
		b = append(b, 0)
		b = appendBytes(appendBytes(b, op.key), op.value)
	}
	return b
}

func appendBytes(b, v []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(v))), v...)
}

// decodeWrites parses what encode wrote.
func decodeWrites(b []byte) (*writes, error) {
	w := &writes{}
	for len(b) > 0 {
		flag := b[0]
		b = b[1:]
		if flag > 1 {
			return nil, fmt.Errorf("write %d: bad flag %d", len(w.ops), flag)
		}
		var op write
		var err error
		if op.key, b, err = cutBytes(b); err != nil {
			return nil, fmt.Errorf("write %d: key: %w", len(w.ops), err)
		}
		if op.delete = flag == 1; !op.delete {
			if op.value, b, err = cutBytes(b); err != nil {
				return nil, fmt.Errorf("write %d: value: %w", len(w.ops), err)
			}
		}
		w.ops = append(w.ops, op)
	}
	return w, nil
}

func cutBytes(b []byte) (v, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, errors.New("truncated")
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}
