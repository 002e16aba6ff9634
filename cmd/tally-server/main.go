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
	// Badger keeps its memtable (128 MiB, so that a 10,000-entry batch is one
	// transaction) as a pointer-free arena in the Go heap: the GC counts it
	// as live and, at the default GOGC=100, lets as much garbage pile up
	// before collecting (RSS 71 MiB instead of 44 MiB after signing 1,000
	// SVIDs; see docs/benchmarks.md). The arena has no pointers, so a GC
	// cycle only scans the rest of the heap: collect at +5 % instead.
	// GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(5)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}
