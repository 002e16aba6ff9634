package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newHealthcheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "healthcheck",
		Short: "Check that the server answers on the Admin API",
		Long:  `Ask the server for its trust bundle; exit 0 if it answers, 1 if not.`,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				if _, err := client.GetBundle(ctx, &tallyv1.GetBundleRequest{}); err != nil {
					return fmt.Errorf("server is unhealthy: %w", rpcError("get bundle", err))
				}
				return a.render(cmd, healthJSON{Healthy: true}, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, "Server is healthy.")
					return err
				})
			})
		},
	}
}

type healthJSON struct {
	Healthy bool `json:"healthy"`
}
