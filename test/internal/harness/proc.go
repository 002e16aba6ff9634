package harness

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// RSSOf returns a process's resident set size in bytes (VmRSS).
func RSSOf(t testing.TB, pid int) int64 {
	t.Helper()
	return statusBytes(t, pid, "VmRSS")
}

// PeakRSSOf returns the largest resident set size process pid has had, in
// bytes (VmHWM).
func PeakRSSOf(t testing.TB, pid int) int64 {
	t.Helper()
	return statusBytes(t, pid, "VmHWM")
}

// statusBytes reads a "<key>: N kB" line of /proc/<pid>/status.
func statusBytes(t testing.TB, pid int, key string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			var kb int64
			_, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb)
			require.NoError(t, err)
			return kb * 1024
		}
	}
	t.Fatalf("no %s for pid %d", key, pid)
	return 0
}

// CPUOf returns the CPU time a process's live threads have used, summed
// from /proc/<pid>/task/*/schedstat (nanoseconds, unlike /proc/<pid>/stat's
// clock ticks).
func CPUOf(t testing.TB, pid int) time.Duration {
	t.Helper()
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	require.NoError(t, err)
	require.NotEmpty(t, stats, "no threads for pid %d", pid)
	var total time.Duration
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		var ns int64
		_, err = fmt.Sscanf(string(b), "%d", &ns)
		require.NoError(t, err)
		total += time.Duration(ns)
	}
	return total
}
