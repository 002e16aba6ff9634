// Command tally-server runs the Tally certificate authority and its APIs.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	// Badger keeps its memtables (16 MiB each) as pointer-free arenas in
	// the Go heap: the GC counts them as live and, at the default GOGC=100,
	// lets as much garbage pile up before collecting (RSS 62 MiB instead of
	// 44 MiB after signing 1,000 SVIDs; see docs/benchmarks.md). Marking
	// the arenas costs nothing, so collect at +5 % instead. GOGC in the
	// environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(5)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}
