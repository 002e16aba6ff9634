package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newJWTCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jwt",
		Short: "Mint JWT-SVIDs",
	}
	cmd.AddCommand(a.newJWTMintCommand())
	return cmd
}

func (a *app) newJWTMintCommand() *cobra.Command {
	var (
		spiffeID  string
		audiences []string
		ttl       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "mint",
		Short: "Mint a JWT-SVID and print it",
		Example: `  tallyctl jwt mint --spiffe-id spiffe://example.org/test --audience api
  tallyctl jwt mint --spiffe-id spiffe://example.org/test --audience a --audience b --ttl 5m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spiffeID == "" {
				return usageErrorf("--spiffe-id is required")
			}
			if err := checkID("spiffe-id", spiffeID); err != nil {
				return &usageError{err: err}
			}
			audiences = nonEmpty(audiences)
			if len(audiences) == 0 {
				return usageErrorf("--audience is required")
			}
			sec, err := ttlSeconds("ttl", ttl)
			if err != nil {
				return &usageError{err: err}
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.MintJWTSVID(ctx, &tallyv1.MintJWTSVIDRequest{
					SpiffeId:   spiffeID,
					Audience:   audiences,
					TtlSeconds: sec,
				})
				if err != nil {
					return rpcError("mint JWT-SVID", err)
				}
				v := jwtJSON{Token: resp.GetToken(), ExpiresAt: unixTime(resp.GetExpiresAt())}
				return a.render(cmd, v, func(w io.Writer) error {
					_, err := fmt.Fprintln(w, resp.GetToken())
					return err
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID of the SVID (required)")
	fs.StringArrayVar(&audiences, "audience", nil, "audience of the token (required, repeatable)")
	fs.DurationVar(&ttl, "ttl", 0, "lifetime of the token, e.g. 5m (0: server default)")
	return cmd
}

type jwtJSON struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
}
