package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens for agent attestation",
	}
	cmd.AddCommand(a.newTokenGenerateCommand())
	return cmd
}

func (a *app) newTokenGenerateCommand() *cobra.Command {
	var (
		spiffeID string
		ttl      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Generate a one-time join token for an agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spiffeID != "" {
				if err := checkID("spiffe-id", spiffeID); err != nil {
					return &usageError{err: err}
				}
			}
			sec, err := ttlSeconds("ttl", ttl)
			if err != nil {
				return &usageError{err: err}
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.CreateJoinToken(ctx, &tallyv1.CreateJoinTokenRequest{TtlSeconds: sec, SpiffeId: spiffeID})
				if err != nil {
					return rpcError("create join token", err)
				}
				return a.render(cmd, newTokenJSON(resp), func(w io.Writer) error {
					return writeToken(w, resp)
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&spiffeID, "spiffe-id", "", "alias SPIFFE ID for the agent, which entries may name as parent")
	fs.DurationVar(&ttl, "ttl", 10*time.Minute, "how long the token can be used")
	return cmd
}

type tokenJSON struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
	SPIFFEID  string `json:"spiffe_id"`
}

func newTokenJSON(resp *tallyv1.CreateJoinTokenResponse) tokenJSON {
	return tokenJSON{
		Token:     resp.GetToken(),
		ExpiresAt: unixTime(resp.GetExpiresAt()),
		SPIFFEID:  resp.GetSpiffeId(),
	}
}

// writeToken writes "Token: <token>" and "Expires: <RFC 3339>" lines.
func writeToken(w io.Writer, resp *tallyv1.CreateJoinTokenResponse) error {
	_, err := fmt.Fprintf(w, "Token: %s\nExpires: %s\n", resp.GetToken(), unixTime(resp.GetExpiresAt()))
	return err
}
