package badgerstore

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/require"
)

// idleWindow is how long BenchmarkIdleCPU watches each database:
// $TALLY_IDLE_WINDOW (a Go duration), 60 s by default.
func idleWindow(b *testing.B) time.Duration {
	v := os.Getenv("TALLY_IDLE_WINDOW")
	if v == "" {
		return time.Minute
	}
	d, err := time.ParseDuration(v)
	require.NoError(b, err, "TALLY_IDLE_WINDOW")
	return d
}

// selfCPU is the user+system CPU time this process has used.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// load1 is the machine's one-minute load average.
func load1(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	require.NoError(b, err)
	l, err := strconv.ParseFloat(strings.Fields(string(raw))[0], 64)
	require.NoError(b, err)
	return l
}

// BenchmarkIdleCPU reports the CPU a database of 10,000 entry-sized values
// uses per minute while nothing reads or writes it: a Store ("tally": no
// badger compactors, the Store's compaction check once a second), and a
// bare badger with Tally's options but 4 compactors (the options before
// issue 9), 2 (the fewest badger allows but none) and none; "no database"
// is this process alone. One iteration watches for idleWindow.
func BenchmarkIdleCPU(b *testing.B) {
	variants := []struct {
		name  string
		opts  func(badger.Options) badger.Options // nil: no database
		store bool
	}{
		{name: "no database"},
		{name: "tally", store: true},
		{name: "before", opts: func(o badger.Options) badger.Options { return o.WithNumCompactors(4) }},
		{name: "2 compactors", opts: func(o badger.Options) badger.Options { return o.WithNumCompactors(2) }},
		{name: "compaction off", opts: func(o badger.Options) badger.Options { return o.WithNumCompactors(0) }},
	}
	window := idleWindow(b)
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			if v.store {
				s := openDir(b, b.TempDir())
				_, err := s.CreateEntries(b.Context(), benchEntries("idle", 10_000))
				require.NoError(b, err)
			}
			if v.opts != nil {
				opts := v.opts(badgerOptions(b.TempDir(), defaultMemTableSize, testLogger(b)))
				db, err := badger.Open(opts)
				require.NoError(b, err)
				b.Cleanup(func() { _ = db.Close() })
				value := make([]byte, 400)
				wb := db.NewWriteBatch()
				for i := range 10_000 {
					require.NoError(b, wb.Set(fmt.Appendf(nil, "e/%06d", i), value))
				}
				require.NoError(b, wb.Flush())
			}
			time.Sleep(2 * time.Second) // past the compactors' random start delay
			var cpu time.Duration
			var load float64
			for b.Loop() {
				cpu0 := selfCPU(b)
				time.Sleep(window)
				cpu = selfCPU(b) - cpu0
				load = load1(b)
			}
			b.ReportMetric(float64(cpu.Microseconds())/1e3/window.Minutes(), "cpu-ms/min")
			b.ReportMetric(load, "load1")
		})
	}
}

// diskUsage is the space the files under dir take on disk (allocated
// blocks: badger preallocates memtable files sparsely).
func diskUsage(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	require.NoError(b, err)
	return n
}

// BenchmarkChurn50k creates 50,000 entries and deletes them, three times,
// pruning events as the registry does (it keeps the newest 10,000), with
// Run collecting value-log garbage every 2 s, and reports the store's size
// on disk after each round and 30 s after the last, so that a store that
// grows with churn shows. (Batches of 10,000 go through write intents, kept
// in the value log until GC.)
func BenchmarkChurn50k(b *testing.B) {
	for b.Loop() {
		dir := b.TempDir()
		s := openConfig(b, Config{Dir: dir, GCInterval: 2 * time.Second})
		ctx, cancel := context.WithCancel(b.Context())
		ran := make(chan error, 1)
		go func() { ran <- s.Run(ctx) }()
		b.Cleanup(func() { cancel(); <-ran })
		start := time.Now()
		for round := range 3 {
			entries := benchEntries(fmt.Sprintf("r%d", round), 50_000)
			ids := make([]string, len(entries))
			for i := 0; i < len(entries); i += 10_000 {
				_, err := s.CreateEntries(ctx, entries[i:i+10_000])
				require.NoError(b, err)
			}
			full := diskUsage(b, dir)
			for i, e := range entries {
				ids[i] = e.ID
			}
			for i := 0; i < len(ids); i += 10_000 {
				require.NoError(b, s.DeleteEntries(ctx, ids[i:i+10_000]))
			}
			rev, err := s.Revision(ctx)
			require.NoError(b, err)
			require.NoError(b, s.PruneEvents(ctx, rev-10_000))
			lsm, vlog := s.db.Size()
			b.Logf("round %d (%s): %.1f MiB on disk with 50k entries, %.1f MiB after deleting them; lsm %.1f MiB, vlog %.1f MiB; %d L0 tables",
				round+1, time.Since(start).Round(time.Second), mb(full), mb(diskUsage(b, dir)), mb(lsm), mb(vlog), s.db.Levels()[0].NumTables)
		}
		time.Sleep(30 * time.Second)
		lsm, vlog := s.db.Size()
		b.Logf("settled: %.1f MiB on disk, lsm %.1f MiB, vlog %.1f MiB; levels:\n%s", mb(diskUsage(b, dir)), mb(lsm), mb(vlog), s.db.LevelsToString())
		b.ReportMetric(mb(diskUsage(b, dir)), "MiB-on-disk")
		b.ReportMetric(load1(b), "load1")
	}
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }
