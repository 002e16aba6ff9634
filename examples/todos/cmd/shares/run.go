package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tallyid/tally/delegation"
	"github.com/tallyid/tally/examples/todos/app"
)

type options struct {
	listen, todos, reminders string
}

func newRootCommand() *cobra.Command {
	o := options{}
	cmd := &cobra.Command{
		Use:          "shares",
		Short:        "The todos demo's shares service, over mTLS for todos-demo",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:9445", "address of the service")
	f.StringVar(&o.todos, "todos", "127.0.0.1:9441", "address of todos")
	f.StringVar(&o.reminders, "reminders", "127.0.0.1:9444", "address of reminders (for the replay demo)")
	return cmd
}

func run(ctx context.Context, o options) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	source, err := workloadapi.NewX509Source(ctx) // $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		return fmt.Errorf("shares: X509-SVID: %w", err)
	}
	defer source.Close()
	exchange, err := delegation.NewClient("") // the agent at $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		return err
	}
	defer exchange.Close()

	h := app.NewShares(app.SharesConfig{
		Exchange:     exchange,
		Todos:        app.Client(source, tlsconfig.AuthorizeID(app.TodosID)),
		TodosURL:     "https://" + o.todos,
		Reminders:    app.Client(source, tlsconfig.AuthorizeID(app.RemindersID)),
		RemindersURL: "https://" + o.reminders,
		Log:          log,
	})
	return app.Serve(ctx, log, source, o.listen, tlsconfig.AuthorizeID(app.DemoID), h)
}
