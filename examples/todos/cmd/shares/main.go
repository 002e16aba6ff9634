// Command shares runs the todos demo's shares service (examples/todos/app),
// which calls todos on behalf of the signed-in user with a token it
// exchanges at Tally through the agent. Its identity comes from the Workload
// API at $SPIFFE_ENDPOINT_SOCKET.
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
