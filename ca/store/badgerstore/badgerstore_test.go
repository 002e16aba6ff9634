package badgerstore

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/internal/storetest"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// openDir opens the store in dir and closes it at the end of the test.
func openDir(t testing.TB, dir string) *Store { return openConfig(t, Config{Dir: dir}) }

// openSmall opens a store in dir whose transactions hold about 120
// entries, so that bigger batches go through a write intent.
func openSmall(t testing.TB, dir string) *Store {
	return openConfig(t, Config{Dir: dir, MemTableSize: 1 << 20})
}

func openConfig(t testing.TB, cfg Config) *Store {
	t.Helper()
	cfg.Logger = testLogger(t)
	s, err := Open(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openDir(t, t.TempDir()) })
}

func TestOpen(t *testing.T) {
	locked := t.TempDir()
	openDir(t, locked)
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no directory"},
		{name: "directory open elsewhere", cfg: Config{Dir: locked, Logger: testLogger(t)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.cfg)
			require.ErrorContains(t, err, "badgerstore: open")
			require.Nil(t, s)
		})
	}
}

// TestConformanceSmallTransactions runs the conformance suite with batches
// beyond one transaction.
func TestConformanceSmallTransactions(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openSmall(t, t.TempDir()) })
}

// TestBatchBeyondOneTransaction creates, lists, reopens and deletes a batch
// that needs several transactions.
func TestBatchBeyondOneTransaction(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := openSmall(t, dir)
	batch := benchEntries("big", 3_000)
	err := s.db.Update(func(txn *badger.Txn) error {
		w := &writes{}
		for _, e := range batch {
			require.NoError(t, putEntry(w, e, dupKey(e)))
		}
		return w.applyTo(txn)
	})
	require.ErrorIs(t, err, badger.ErrTxnTooBig, "the batch must not fit one transaction")

	got, err := s.CreateEntries(ctx, batch)
	require.NoError(t, err)
	require.Equal(t, uint64(3_000), got[len(got)-1].Revision)
	require.NoError(t, s.Close())

	s = openSmall(t, dir)
	requireStored(t, s, 3_000, 3_000)
	ids := make([]string, len(batch))
	for i, e := range batch {
		ids[i] = e.ID
	}
	require.NoError(t, s.DeleteEntries(ctx, ids))
	requireStored(t, s, 0, 6_000)
	require.Equal(t, uint64(6_000), s.rev.Load())
}

// TestOpenAfterCrashLeftEmptyFile: a kill -9 right after badger created a
// memtable file leaves it empty, which must not keep the store shut.
func TestOpenAfterCrashLeftEmptyFile(t *testing.T) {
	dir := t.TempDir()
	s := openDir(t, dir)
	_, err := s.CreateEntries(t.Context(), benchEntries("e", 10))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "00099.mem"), nil, 0o600))

	s = openDir(t, dir)

	requireStored(t, s, 10, 10)
}

// requireStored checks how many entries and events s has.
func requireStored(t *testing.T, s *Store, entries, events int) {
	t.Helper()
	all, err := s.ListEntries(t.Context(), store.EntryFilter{})
	require.NoError(t, err)
	require.Len(t, all, entries)
	evs, err := s.Events(t.Context(), 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, events)
}

// TestBatchTooBig checks that a batch beyond the largest write intent fails
// as a whole.
func TestBatchTooBig(t *testing.T) {
	ctx := t.Context()
	s := openSmall(t, t.TempDir())
	s.maxIntent = 100 << 10

	_, err := s.CreateEntries(ctx, benchEntries("big", 3_000))

	require.ErrorContains(t, err, "split it")
	require.ErrorIs(t, err, badger.ErrTxnTooBig)
	rev, err := s.Revision(ctx)
	require.NoError(t, err)
	require.Zero(t, rev)
	all, err := s.ListEntries(ctx, store.EntryFilter{})
	require.NoError(t, err)
	require.Empty(t, all)
}

// TestInterruptedIntent leaves a write intent half applied, as a crash in
// commit would, and checks that Open finishes it.
func TestInterruptedIntent(t *testing.T) {
	dir := t.TempDir()
	s := openSmall(t, dir)
	w := &writes{}
	for i, e := range benchEntries("cut", 1_000) {
		e.Revision = uint64(i + 1)
		require.NoError(t, putEntry(w, e, dupKey(e)))
		require.NoError(t, putEvent(w, store.Event{Revision: e.Revision, Type: store.EventCreated, Entry: e}))
	}
	w.set([]byte(keyRevision), encodeUint64(1_000))
	decoded, err := decodeWrites(w.encode())
	require.NoError(t, err)
	require.Len(t, decoded.ops, len(w.ops))
	require.Equal(t, w.encode(), decoded.encode())
	require.NoError(t, s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(keyIntent), w.encode()) }))
	half := &writes{ops: w.ops[:500]} // about 70 of the 1,000 entries
	require.NoError(t, s.db.Update(half.applyTo))
	require.NoError(t, s.Close())

	s = openSmall(t, dir)

	require.Equal(t, uint64(1_000), s.rev.Load())
	requireStored(t, s, 1_000, 1_000)
	require.NoError(t, s.db.View(func(txn *badger.Txn) error {
		found, err := exists(txn, []byte(keyIntent))
		require.False(t, found, "the intent is gone once applied")
		return err
	}))
}

// TestFailedIntentRefusesWrites: once applying an intent failed half way,
// entry writes are refused (until a restart), as a write computed over the
// partial state would be undone when the intent is finished.
func TestFailedIntentRefusesWrites(t *testing.T) {
	ctx := t.Context()
	s := openSmall(t, t.TempDir())
	w := &writes{}
	for _, e := range benchEntries("half", 1_000) {
		require.NoError(t, putEntry(w, e, dupKey(e)))
	}
	w.set(nil, []byte("badger refuses an empty key")) // fails the last chunk

	err := s.commit(w)

	require.ErrorContains(t, err, "restart to finish it")
	_, err = s.CreateEntries(ctx, benchEntries("later", 1))
	require.ErrorContains(t, err, "restart to finish it")
	require.NoError(t, s.db.View(func(txn *badger.Txn) error {
		found, err := exists(txn, entryKey("later-000000"))
		require.False(t, found)
		return err
	}))
}

// TestDecodeWritesRejectsJunk: a damaged intent is an error, not a panic.
func TestDecodeWritesRejectsJunk(t *testing.T) {
	good := (&writes{ops: []write{{key: []byte("k"), value: []byte("v")}, {key: []byte("d"), delete: true}}}).encode()
	for _, b := range [][]byte{{2}, {0}, {0, 5, 'k'}, good[:len(good)-1], {0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}} {
		_, err := decodeWrites(b)
		require.Error(t, err, "%x", b)
	}
	w, err := decodeWrites(good)
	require.NoError(t, err)
	require.Len(t, w.ops, 2)
}

// TestRestart closes a store and checks that a reopened one has every kind
// of record, the revision, the event log with its pruned marker, and the
// duplicate index.
func TestRestart(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	created := time.Unix(1_800_000_000, 0).UTC()
	agent := store.Agent{ID: "spiffe://example.org/tally/agent/n1", AttestationType: "join_token", SerialNumber: "7", ExpiresAt: created, AttestedAt: created, RenewedAt: created}
	token := store.JoinToken{Token: "t1", ExpiresAt: created.Add(time.Hour)}

	s, err := Open(Config{Dir: dir, Logger: testLogger(t)})
	require.NoError(t, err)
	_, err = s.CreateEntries(ctx, []store.Entry{benchEntry("a"), benchEntry("b"), benchEntry("c")})
	require.NoError(t, err)
	updated := benchEntry("a")
	updated.Hint = "updated"
	_, err = s.UpdateEntry(ctx, updated)
	require.NoError(t, err)
	require.NoError(t, s.DeleteEntries(ctx, []string{"b"}))
	require.NoError(t, s.PruneEvents(ctx, 3))
	require.NoError(t, s.PutAgent(ctx, agent))
	require.NoError(t, s.CreateJoinToken(ctx, token))
	require.NoError(t, s.SaveJournal(ctx, []byte("journal")))
	require.NoError(t, s.SaveBundle(ctx, []byte("bundle")))
	wantEntries, err := s.ListEntries(ctx, store.EntryFilter{})
	require.NoError(t, err)
	wantEvents, err := s.Events(ctx, 2, 0)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s = openDir(t, dir)
	rev, err := s.Revision(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(5), rev)
	entries, err := s.ListEntries(ctx, store.EntryFilter{})
	require.NoError(t, err)
	require.Equal(t, wantEntries, entries)
	events, err := s.Events(ctx, 2, 0)
	require.NoError(t, err)
	require.Equal(t, wantEvents, events)
	_, err = s.Events(ctx, 1, 0)
	require.ErrorIs(t, err, store.ErrCompacted)
	gotAgent, err := s.GetAgent(ctx, agent.ID)
	require.NoError(t, err)
	require.Equal(t, agent, gotAgent)
	gotToken, err := s.ConsumeJoinToken(ctx, token.Token, created)
	require.NoError(t, err)
	require.Equal(t, token, gotToken)
	journal, err := s.LoadJournal(ctx)
	require.NoError(t, err)
	require.Equal(t, []byte("journal"), journal)
	bundle, err := s.LoadBundle(ctx)
	require.NoError(t, err)
	require.Equal(t, []byte("bundle"), bundle)

	dup := benchEntry("c")
	dup.ID = "c2"
	_, err = s.CreateEntries(ctx, []store.Entry{dup})
	require.ErrorIs(t, err, store.ErrAlreadyExists)
	got, err := s.CreateEntries(ctx, []store.Entry{benchEntry("d")})
	require.NoError(t, err)
	require.Equal(t, uint64(6), got[0].Revision)
}

const (
	helperDirEnv   = "TALLY_BADGERSTORE_HELPER_DIR"
	helperBatchEnv = "TALLY_BADGERSTORE_HELPER_BATCH"
)

// TestMain runs the writer child of TestKill9 when the environment asks
// for it, and the tests otherwise.
func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(helperWriter(dir))
	}
	os.Exit(m.Run())
}

// helperWriter is the child process of TestKill9: it creates batches of
// $TALLY_BADGERSTORE_HELPER_BATCH entries (default 1) and prints each
// batch's ID prefix once CreateEntries has returned, until killed. Batches
// of more than one entry use small transactions, so they go through a write
// intent.
func helperWriter(dir string) int {
	n, _ := strconv.Atoi(os.Getenv(helperBatchEnv))
	cfg := Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if n > 1 {
		cfg.MemTableSize = 1 << 20
	}
	s, err := Open(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 0; ; i++ {
		prefix := fmt.Sprintf("p%d-%06d", os.Getpid(), i)
		batch := benchEntries(prefix, max(n, 1))
		if _, err := s.CreateEntries(context.Background(), batch); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("ack %s\n", prefix)
	}
}

// TestKill9 kills a writer process with SIGKILL, several times over the same
// directory, and requires every batch it acknowledged to be there after,
// every batch to be there whole or not at all, and the event log to match.
func TestKill9(t *testing.T) {
	for _, tc := range []struct {
		name        string
		batch, acks int
	}{
		{name: "one entry per transaction", batch: 1, acks: 200},
		{name: "batches beyond one transaction", batch: 600, acks: 3},
	} {
		t.Run(tc.name, func(t *testing.T) { testKill9(t, tc.batch, tc.acks) })
	}
}

func testKill9(t *testing.T, batch, acks int) {
	const rounds = 3
	dir := t.TempDir()
	var acked []string
	for round := range rounds {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, fmt.Sprintf("%s=%d", helperBatchEnv, batch))
		cmd.Stderr = t.Output()
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := bufio.NewScanner(stdout)
		n := 0
		var last, interval time.Duration
		start := time.Now()
		for n < acks && lines.Scan() {
			if prefix, ok := strings.CutPrefix(lines.Text(), "ack "); ok {
				acked = append(acked, prefix)
				n++
				interval, last = time.Since(start)-last, time.Since(start)
			}
		}
		// Kill at a random point of the next batch.
		time.Sleep(rand.N(interval + 1))
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		require.Equal(t, acks, n, "round %d: the writer stopped early", round)

		s, err := Open(Config{Dir: dir, Logger: testLogger(t)})
		require.NoError(t, err)
		all, err := s.ListEntries(t.Context(), store.EntryFilter{})
		require.NoError(t, err)
		perBatch := map[string]int{}
		for _, e := range all {
			perBatch[e.ID[:strings.LastIndexByte(e.ID, '-')]]++
		}
		for _, prefix := range acked {
			require.Equal(t, batch, perBatch[prefix], "round %d: acknowledged batch %s lost", round, prefix)
		}
		for prefix, got := range perBatch {
			require.Equal(t, batch, got, "round %d: batch %s is there in part", round, prefix)
		}
		rev, err := s.Revision(t.Context())
		require.NoError(t, err)
		events, err := s.Events(t.Context(), 0, 0)
		require.NoError(t, err)
		require.Len(t, events, int(rev), "round %d", round)
		require.Len(t, all, int(rev), "round %d", round)
		for i, ev := range events {
			require.Equal(t, uint64(i+1), ev.Revision, "round %d", round)
		}
		require.NoError(t, s.Close())
	}
}

// recorder is a slog.Handler that passes records to a channel.
type recorder chan slog.Record

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r recorder) WithGroup(string) slog.Handler            { return r }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r <- rec:
	default: // never block the store on a slow test
	}
	return nil
}

// TestRunCollectsGarbage drives Run's schedule with a fake clock.
func TestRunCollectsGarbage(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Now())
	logs := make(recorder, 100)
	s, err := Open(Config{Dir: t.TempDir(), Logger: slog.New(logs), GCInterval: time.Minute, Clock: clock})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	gcDone := func() bool {
		for {
			select {
			case rec := <-logs:
				if rec.Message == "value log GC done" {
					return true
				}
			case <-time.After(10 * time.Second):
				return false
			}
		}
	}
	for round := range 2 {
		require.Eventually(t, clock.HasWaiters, 10*time.Second, time.Millisecond)
		clock.Step(time.Minute)
		require.True(t, gcDone(), "round %d: no GC after the interval", round)
	}

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
