// Command todos-demo plays the todos demo's story (examples/todos/README.md):
// it signs Alice and Bob in at the OpenID provider, calls the services as
// the users' edge, and prints each request and its answer. It is a workload
// too: its identity comes from the Workload API at $SPIFFE_ENDPOINT_SOCKET.
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
