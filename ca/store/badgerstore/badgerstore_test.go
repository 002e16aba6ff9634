package badgerstore

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/storetest"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// openDir opens the store in dir and closes it at the end of the test.
func openDir(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir, Logger: testLogger(t)})
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

// TestCreateEntriesTooBig checks that a batch beyond one transaction fails
// as a whole.
func TestCreateEntriesTooBig(t *testing.T) {
	ctx := t.Context()
	s := openDir(t, t.TempDir())
	batch := make([]store.Entry, 40_000)
	for i := range batch {
		batch[i] = benchEntry(fmt.Sprintf("big-%06d", i))
	}

	_, err := s.CreateEntries(ctx, batch)

	require.ErrorContains(t, err, "split it")
	rev, err := s.Revision(ctx)
	require.NoError(t, err)
	require.Zero(t, rev)
	all, err := s.ListEntries(ctx, store.EntryFilter{})
	require.NoError(t, err)
	require.Empty(t, all)
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

const helperDirEnv = "TALLY_BADGERSTORE_HELPER_DIR"

// TestMain runs the writer child of TestKill9 when the environment asks
// for it, and the tests otherwise.
func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(helperWriter(dir))
	}
	os.Exit(m.Run())
}

// helperWriter is the child process of TestKill9: it creates entries one by
// one and prints each ID once CreateEntries has returned, until killed.
func helperWriter(dir string) int {
	s, err := Open(Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 0; ; i++ {
		e := benchEntry(fmt.Sprintf("p%d-%06d", os.Getpid(), i))
		if _, err := s.CreateEntries(context.Background(), []store.Entry{e}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("ack %s\n", e.ID)
	}
}

// TestKill9 kills a writer process with SIGKILL, several times over the same
// directory, and requires every entry it acknowledged to be there after.
func TestKill9(t *testing.T) {
	const rounds, acks = 3, 200
	dir := t.TempDir()
	var acked []string
	for round := range rounds {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperDirEnv+"="+dir)
		cmd.Stderr = t.Output()
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := bufio.NewScanner(stdout)
		n := 0
		for n < acks && lines.Scan() {
			if id, ok := strings.CutPrefix(lines.Text(), "ack "); ok {
				acked = append(acked, id)
				n++
			}
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		require.Equal(t, acks, n, "round %d: the writer stopped early", round)

		s, err := Open(Config{Dir: dir, Logger: testLogger(t)})
		require.NoError(t, err)
		for _, id := range acked {
			_, err := s.GetEntry(t.Context(), id)
			require.NoError(t, err, "round %d: acknowledged entry lost", round)
		}
		rev, err := s.Revision(t.Context())
		require.NoError(t, err)
		events, err := s.Events(t.Context(), 0, 0)
		require.NoError(t, err)
		require.Len(t, events, int(rev), "round %d", round)
		require.GreaterOrEqual(t, len(events), len(acked), "round %d", round)
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
