package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tallyid/tally/examples/todos/app"
)

type options struct {
	issuer, clientID, shares, reminders, todosDemo string
}

func newRootCommand() *cobra.Command {
	o := options{}
	cmd := &cobra.Command{
		Use:          "todos-demo",
		Short:        "Plays the todos demo's story through the services and prints it",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.issuer, "issuer", "http://127.0.0.1:9998", "the OpenID provider the users sign in at")
	f.StringVar(&o.clientID, "client-id", "todos-app", "the client they sign in to")
	f.StringVar(&o.shares, "shares", "127.0.0.1:9445", "address of shares")
	f.StringVar(&o.reminders, "reminders", "127.0.0.1:9444", "address of reminders")
	f.StringVar(&o.todosDemo, "todos-demo", "127.0.0.1:9442", "address of todos's demo-only listener")
	return cmd
}

func run(ctx context.Context, o options) error {
	source, err := workloadapi.NewX509Source(ctx) // $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		return fmt.Errorf("todos-demo: X509-SVID: %w", err)
	}
	defer source.Close()
	return app.RunDemo(ctx, os.Stdout, app.DemoConfig{
		Source:       source,
		Issuer:       o.issuer,
		ClientID:     o.clientID,
		SharesURL:    "https://" + o.shares,
		RemindersURL: "https://" + o.reminders,
		TodosDemoURL: "https://" + o.todosDemo,
	})
}
