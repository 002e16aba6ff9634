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
	// lets as much garbage pile up before collecting. After signing 1,011
	// SVIDs: RSS 62 MiB at GOGC=100, 49 at 50, 42 at 20, 37 at 5; but at 5
	// the GC runs so often that batched signing through the Node API fell
	// to 0.59 of the crypto floor, against 0.72 at 20 (docs/benchmarks.md).
	// GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(20)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}
