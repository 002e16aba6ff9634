// Command reminders runs the todos demo's reminders service
// (examples/todos/app), which asks todos for the todos due today. Its
// identity comes from the Workload API at $SPIFFE_ENDPOINT_SOCKET.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}
