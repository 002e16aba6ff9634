package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyid/tally/examples/todos/idp"
	"github.com/tallyid/tally/internal/httpserve"
	"github.com/tallyid/tally/internal/logging"
	"github.com/tallyid/tally/internal/logkey"
)

type options struct {
	listen, issuer, clientID string
	redirectURIs             []string
	ttl                      time.Duration
	logLevel, logFormat      string
}

func newRootCommand() *cobra.Command {
	o := options{}
	cmd := &cobra.Command{
		Use:   "idp",
		Short: "OpenID provider for the todos demo: alice and bob sign in with a password",
		Long: `Serves an OpenID provider over plain HTTP on --listen, with the users
alice (password alice-password) and bob (bob-password), both with roles
["user"], and one public client that uses the code flow with PKCE.
An https --issuer needs a TLS-terminating proxy in front.`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:9998", "TCP address to serve on")
	f.StringVar(&o.issuer, "issuer", "", `issuer URL (default "http://" + the address listened on)`)
	f.StringVar(&o.clientID, "client-id", "todos-app", "the client's ID, the aud of the tokens")
	f.StringSliceVar(&o.redirectURIs, "redirect-uri", idp.DefaultRedirectURIs, "the client's redirect URIs (a loopback one matches any port)")
	f.DurationVar(&o.ttl, "ttl", idp.DefaultTTL, "lifetime of ID and access tokens")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "json or text")
	return cmd
}

func run(ctx context.Context, o options) error {
	log, err := logging.New(os.Stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("idp: listen: %w", err)
	}
	defer lis.Close()
	if o.issuer == "" {
		o.issuer = "http://" + lis.Addr().String()
	}
	p, err := idp.New(idp.Config{
		Issuer:       o.issuer,
		ClientID:     o.clientID,
		RedirectURIs: o.redirectURIs,
		TTL:          o.ttl,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	log.Info("serving OpenID provider", logkey.URL, p.Issuer(), "listen", lis.Addr().String(), "client_id", o.clientID)
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	return httpserve.Serve(ctx, srv, lis, false)
}
