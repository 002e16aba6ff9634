package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tallyid/tally/examples/todos/app"
)

type options struct {
	listen, todos string
}

func newRootCommand() *cobra.Command {
	o := options{}
	cmd := &cobra.Command{
		Use:          "reminders",
		Short:        "The todos demo's reminders service, over mTLS for todos-demo (and shares, for the replay demo)",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:9444", "address of the service")
	f.StringVar(&o.todos, "todos", "127.0.0.1:9441", "address of todos")
	return cmd
}

func run(ctx context.Context, o options) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	source, err := workloadapi.NewX509Source(ctx) // $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		return fmt.Errorf("reminders: X509-SVID: %w", err)
	}
	defer source.Close()

	todos := app.Client(source, tlsconfig.AuthorizeID(app.TodosID))
	h := app.NewReminders(todos, "https://"+o.todos, log)
	// todos is not among the callers: todos may never call reminders. shares
	// is, only so that it can hand reminders a token in the replay demo.
	return app.Serve(ctx, log, source, o.listen, tlsconfig.AuthorizeOneOf(app.DemoID, app.SharesID), h)
}
