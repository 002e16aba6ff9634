package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/tallyid/tally/delegation"
	"github.com/tallyid/tally/examples/todos/app"
)

type options struct {
	listen, demoListen, reminders string
}

func newRootCommand() *cobra.Command {
	o := options{}
	cmd := &cobra.Command{
		Use:          "todos",
		Short:        "The todos demo's todos service, over mTLS for reminders and shares",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:9441", "address of the service, for reminders and shares")
	f.StringVar(&o.demoListen, "demo-listen", "127.0.0.1:9442", "address of the demo-only listener, for todos-demo")
	f.StringVar(&o.reminders, "reminders", "127.0.0.1:9444", "address of reminders (which the demo listener makes todos call, to be refused)")
	return cmd
}

func run(ctx context.Context, o options) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	source, err := workloadapi.NewX509Source(ctx) // $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		return fmt.Errorf("todos: X509-SVID: %w", err)
	}
	defer source.Close()
	jwts, err := workloadapi.NewJWTSource(ctx) // the JWT bundles that delegated tokens are verified with
	if err != nil {
		return fmt.Errorf("todos: JWT bundles: %w", err)
	}
	defer jwts.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		return fmt.Errorf("todos: X509-SVID: %w", err)
	}
	verifier, err := delegation.NewVerifier(jwts, svid.ID, delegation.WithLogger(log))
	if err != nil {
		return err
	}

	api := app.NewTodos(app.NewStore(app.SeedTodos()), verifier, log)
	demo := app.NewTodosDemo(app.Client(source, tlsconfig.AuthorizeID(app.RemindersID)), "https://"+o.reminders, log)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return app.Serve(ctx, log, source, o.listen, tlsconfig.AuthorizeOneOf(app.RemindersID, app.SharesID), api)
	})
	g.Go(func() error {
		return app.Serve(ctx, log.With("listener", "demo"), source, o.demoListen, tlsconfig.AuthorizeID(app.DemoID), demo)
	})
	return g.Wait()
}
