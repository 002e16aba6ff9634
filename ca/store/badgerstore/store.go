// Package badgerstore implements store.Store on an embedded badger database,
// the default storage of a single Tally server.
package badgerstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/ristretto/v2/z"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca/store"
)

const (
	// defaultMemTableSize bounds one transaction: badger accepts a write
	// batch of up to 15% of a memtable, and at most that many bytes over 96
	// keys: 16 MiB admits about 26,000 keys and 2.4 MiB, a batch of about
	// 2,000 typical entries. Bigger batches go through a write intent (see commit).
	// Badger allocates the memtables in the Go heap, where a large one would
	// raise the garbage collector's goal by its size.
	defaultMemTableSize = 16 << 20
	// valueLogFileSize bounds one value, so one write intent.
	valueLogFileSize = 64 << 20
	// valueThreshold keeps small values (a typical entry is 300–500 bytes)
	// in the LSM tree; larger ones go to the value log, where they count only
	// as a pointer against the transaction size.
	valueThreshold = 1 << 10

	defaultGCInterval = 5 * time.Minute
	gcDiscardRatio    = 0.5
)

// Config configures Open.
type Config struct {
	// Dir is the database directory, created if missing. Required.
	Dir string
	// Logger receives badger's warnings and errors. Default: slog.Default().
	Logger *slog.Logger
	// GCInterval is the period of value-log garbage collection in Run.
	// Default: 5 minutes.
	GCInterval time.Duration
	// Clock drives Run's schedule. Default: the real clock.
	Clock clock.WithTicker
	// MemTableSize is the size of badger's memtables, which bounds one
	// transaction. Default: 16 MiB.
	MemTableSize int64
}

// Store is a store.Store on badger. Every method that changes something
// returns only after its transaction is synced to disk. All methods are safe
// for concurrent use; Close must come after Run has returned.
type Store struct {
	db         *badger.DB
	log        *slog.Logger
	clock      clock.WithTicker
	gcInterval time.Duration

	// mu serialises entry mutations, so that revisions are allocated without
	// gaps and committed in order: a reader of Events never skips one.
	mu sync.Mutex
	// rev is the newest committed revision; written only under mu, after
	// the commit.
	rev atomic.Uint64
	// pruneMu serialises PruneEvents, the only writer of m/pruned.
	pruneMu sync.Mutex
	// applying is held by commit while it applies a write intent over
	// several transactions, and by readers of entries and events (view).
	applying sync.RWMutex
	// maxIntent is the largest write intent commit saves, in bytes.
	maxIntent int
	// unfinished, once set (under mu), is why entry writes are refused: a
	// write intent failed half way. See commit.
	unfinished error
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the store in cfg.Dir. Only one process may have a
// directory open at a time.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("badgerstore: open: no directory configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = defaultGCInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.MemTableSize <= 0 {
		cfg.MemTableSize = defaultMemTableSize
	}
	log := cfg.Logger.With("component", "badgerstore")
	opts := badger.DefaultOptions(cfg.Dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{log: log}).
		WithMemTableSize(cfg.MemTableSize).
		WithValueThreshold(valueThreshold).
		// Memory: at most one memtable waiting for its flush, a small block
		// cache (the registry keeps entries in memory anyway), and value-log
		// files small enough that GC can reclaim them.
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithValueLogFileSize(valueLogFileSize)
	db, err := badger.Open(opts)
	if err != nil && strings.HasSuffix(err.Error(), z.NewFile.Error()) {
		// A crash between creating a memtable or value-log file and its
		// first write leaves it empty; badger v4 then fails to open once,
		// having sized the file, and opens on the next try
		// (dgraph-io/badger#2207). Badger formats the sentinel into its
		// error (%+v), so only the text tells.
		log.Warn("reopening the database after a crash left an empty file", "error", err)
		db, err = badger.Open(opts)
	}
	if err != nil {
		return nil, fmt.Errorf("badgerstore: open %s: %w", cfg.Dir, err)
	}
	s := &Store{db: db, log: log, clock: cfg.Clock, gcInterval: cfg.GCInterval, maxIntent: valueLogFileSize / 2}
	if n, err := s.finishIntent(); err != nil {
		return nil, errors.Join(fmt.Errorf("badgerstore: open %s: finish an interrupted batch: %w", cfg.Dir, err), db.Close())
	} else if n > 0 {
		log.Warn("finished a batch write that was interrupted", "writes", n)
	}
	var rev uint64
	err = db.View(func(txn *badger.Txn) error {
		var err error
		rev, err = getUint64(txn, keyRevision)
		return err
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("badgerstore: open %s: read revision: %w", cfg.Dir, err), db.Close())
	}
	s.rev.Store(rev)
	return s, nil
}

// Close closes the database. The store must not be used afterwards.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("badgerstore: close: %w", err)
	}
	return nil
}

// Run collects value-log garbage every GCInterval until ctx is done, then
// returns nil. A failed collection is logged and retried at the next tick.
func (s *Store) Run(ctx context.Context) error {
	t := s.clock.NewTicker(s.gcInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			s.collectGarbage(ctx)
		}
	}
}

// collectGarbage rewrites value-log files while at least half of one is
// garbage.
func (s *Store) collectGarbage(ctx context.Context) {
	rewrites := 0
	for ctx.Err() == nil {
		err := s.db.RunValueLogGC(gcDiscardRatio)
		if err == nil {
			rewrites++
			continue
		}
		if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
			s.log.Warn("value log GC failed", "error", err)
		}
		break
	}
	s.log.Debug("value log GC done", "rewrites", rewrites)
}

// view runs fn in a read-only transaction that sees no half-applied write
// intent.
func (s *Store) view(fn func(txn *badger.Txn) error) error {
	s.applying.RLock()
	defer s.applying.RUnlock()
	return s.db.View(fn)
}

// update runs fn in a read-write transaction, again if it conflicted with a
// concurrent one (fn must be safe to rerun).
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	const maxAttempts = 10
	for attempt := 1; ; attempt++ {
		err := s.db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) || attempt == maxAttempts {
			return err
		}
	}
}

// getUint64 reads a big-endian counter; a missing key reads as 0.
func getUint64(txn *badger.Txn, key string) (uint64, error) {
	item, err := txn.Get([]byte(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v uint64
	err = item.Value(func(b []byte) error {
		if len(b) != 8 {
			return fmt.Errorf("%s: %d bytes, want 8", key, len(b))
		}
		v = binary.BigEndian.Uint64(b)
		return nil
	})
	return v, err
}

// exists reports whether key is present.
func exists(txn *badger.Txn, key []byte) (bool, error) {
	_, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}
