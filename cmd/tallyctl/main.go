// Command tallyctl manages a Tally server through its Admin API.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tallyid/tally/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, cli.NewRootCommand())
	stop()
	os.Exit(code)
}
