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
web address). Open <web address>/dashboard/login?token=<token> once: the page keeps
a session cookie and drops the token from the address.`,
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
				out := dashboardTokenJSON{Token: resp.GetToken(), ExpiresAt: unixTime(resp.GetExpiresAt())}
				return a.render(cmd, out, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "Token: %s\nExpires: %s\n", out.Token, out.ExpiresAt)
					return err
				})
			})
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token opens the dashboard (at most 24h)")
	return cmd
}

type dashboardTokenJSON struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
}
