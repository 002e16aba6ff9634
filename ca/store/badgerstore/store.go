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
	"github.com/tallyid/tally/internal/logkey"
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

	// compactInterval is how often the store asks badger whether a level
	// needs compacting (see compact).
	compactInterval = time.Second
)

// Config configures Open.
type Config struct {
	// Dir is the database directory, created if missing. Required.
	Dir string
	// Logger receives badger's warnings and errors. Default: discard.
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
//
// Write intents (batch.go). An entry mutation too big for one badger
// transaction is saved whole as one intent value, then applied over several
// transactions, and the intent is deleted with the last of them; Open
// finishes an intent a crash interrupted, so a batch is never half there.
//
// Locks, always taken in this order: mu (every entry mutation: revisions
// are allocated and committed in order), then applying (write lock: commit
// while it applies an intent; read lock: readers of entries and events, so
// that nobody sees half a batch). pruneMu is independent: it only serialises
// PruneEvents and is never held with the others.
//
// Poisoned state: if applying an intent fails half way, unfinished is set
// (under mu) and every later entry mutation is refused with it; what was
// applied stays, and so does the intent, so a restart (Open) applies it
// again from the start, which gives the same result. Reads go on.
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

	// stopCompact, closed once by Close, ends compact, which then closes
	// compactDone.
	stopCompact     chan struct{}
	stopCompactOnce sync.Once
	compactDone     chan struct{}
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the store in cfg.Dir. Only one process may have a
// directory open at a time.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("badgerstore: open: no directory configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
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
	log := cfg.Logger.With(logkey.Component, "badgerstore")
	opts := badgerOptions(cfg.Dir, cfg.MemTableSize, log)
	db, err := badger.Open(opts)
	if err != nil && strings.HasSuffix(err.Error(), z.NewFile.Error()) {
		// A crash between creating a memtable or value-log file and its
		// first write leaves it empty; badger v4 then fails to open once,
		// having sized the file, and opens on the next try
		// (dgraph-io/badger#2207). Badger formats the sentinel into its
		// error (%+v), so only the text tells.
		log.Warn("reopening the database after a crash left an empty file", logkey.Error, err)
		db, err = badger.Open(opts)
	}
	if err != nil {
		return nil, fmt.Errorf("badgerstore: open %s: %w", cfg.Dir, err)
	}
	s := &Store{
		db: db, log: log, clock: cfg.Clock, gcInterval: cfg.GCInterval, maxIntent: valueLogFileSize / 2,
		stopCompact: make(chan struct{}), compactDone: make(chan struct{}),
	}
	go s.compact()
	if n, err := s.finishIntent(); err != nil {
		return nil, errors.Join(fmt.Errorf("badgerstore: open %s: finish an interrupted batch: %w", cfg.Dir, err), s.Close())
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
		return nil, errors.Join(fmt.Errorf("badgerstore: open %s: read revision: %w", cfg.Dir, err), s.Close())
	}
	s.rev.Store(rev)
	return s, nil
}

// badgerOptions are the options Open gives badger.
func badgerOptions(dir string, memTableSize int64, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		// No compactors of badger's own: each polls every 50 ms whether
		// there is anything to compact (runCompactor in badger's levels.go),
		// about 0.5 s of CPU a minute for the default 4 on an idle server
		// (issue 9). The store compacts instead; see compact.
		WithNumCompactors(0).
		WithSyncWrites(true).
		WithLogger(badgerLogger{log: log}).
		WithMemTableSize(memTableSize).
		WithValueThreshold(valueThreshold).
		// Memory: at most one memtable waiting for its flush, a small block
		// cache (the registry keeps entries in memory anyway), and value-log
		// files small enough that GC can reclaim them.
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithValueLogFileSize(valueLogFileSize)
}

// Close closes the database, after any compaction in progress. The store
// must not be used afterwards.
func (s *Store) Close() error {
	s.stopCompactOnce.Do(func() { close(s.stopCompact) })
	<-s.compactDone
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
			s.log.Warn("value log GC failed", logkey.Error, err)
		}
		break
	}
	s.log.Debug("value log GC done", "rewrites", rewrites)
}

// compact does the work of badger's compactors, which badgerOptions turns
// off, without their polling: every compactInterval it asks badger for the
// levels' scores (DB.Levels: the scores badger's compactors pick by, of
// levels at or above 1 only, so L0 at NumLevelZeroTables tables or a level
// over its target size) and, when any level needs it, merges the tree into
// one level with DB.Flatten, which drops deleted and overwritten versions
// and feeds value-log GC its discard statistics like any compaction. Writes
// go on meanwhile; badger stalls them only if L0 reaches
// NumLevelZeroTablesStall (15) tables first. It returns when Close asks.
func (s *Store) compact() {
	defer close(s.compactDone)
	t := time.NewTicker(compactInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopCompact:
			return
		case <-t.C:
		}
		if !needsCompaction(s.db.Levels()) {
			continue
		}
		if err := s.db.Flatten(1); err != nil {
			s.log.Warn("compaction failed", logkey.Error, err)
		}
	}
}

// needsCompaction reports whether badger would compact one of levels.
func needsCompaction(levels []badger.LevelInfo) bool {
	for _, l := range levels {
		if l.Score >= 1 {
			return true
		}
	}
	return false
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
