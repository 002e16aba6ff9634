// Command todos runs the todos demo's todos service (examples/todos/app):
// the users' todos, for reminders acting for itself and for shares on behalf
// of a user. Its identity comes from the Workload API at
// $SPIFFE_ENDPOINT_SOCKET.
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
