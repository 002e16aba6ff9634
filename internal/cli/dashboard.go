package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newDashboardCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Access to the SVID rotation dashboard",
	}
	cmd.AddCommand(a.newDashboardTokenCommand())
	return cmd
}

func (a *app) newDashboardTokenCommand() *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Sign a short-lived bearer token that opens the read-only dashboard",
		Long: `Sign a short-lived bearer token for the dashboard (the server's /dashboard/ on its
web address) and print the URL that opens it: <web address>/dashboard/login#token=<token>.
The token travels in the fragment, which the browser never sends to a server; the page
swaps it for a session cookie and drops it from the address.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sec, err := ttlSeconds("ttl", ttl)
			if err != nil {
				return &usageError{err: err}
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.CreateDashboardToken(ctx, &tallyv1.CreateDashboardTokenRequest{TtlSeconds: sec})
				if err != nil {
					return rpcError("create dashboard token", err)
				}
				out := dashboardTokenJSON{Token: resp.GetToken(), ExpiresAt: unixTime(resp.GetExpiresAt()), LoginURL: resp.GetLoginUrl()}
				return a.render(cmd, out, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "Token: %s\nExpires: %s\nOpen: %s\n", out.Token, out.ExpiresAt, out.LoginURL)
					return err
				})
			})
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the token opens the dashboard (default 1h, or ca_ttl/6 if shorter; at most ca_ttl/6)")
	return cmd
}

type dashboardTokenJSON struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
	LoginURL  string `json:"login_url"`
}
