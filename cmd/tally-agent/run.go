package main

import (
	"os"

	"github.com/spf13/cobra"

	agentapp "github.com/tallyid/tally/internal/app/agent"
	"github.com/tallyid/tally/internal/config"
	"github.com/tallyid/tally/internal/logging"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:          "tally-agent",
		Short:        "Tally node agent: attests to the server and serves the SPIFFE Workload API",
		SilenceUsage: true,
	}
	root.AddCommand(newRunCommand())
	return root
}

// envJoinToken holds the join token when neither join_token nor
// join_token_file is set.
const envJoinToken = "TALLY_JOIN_TOKEN"

func newRunCommand() *cobra.Command {
	cfg := agentapp.DefaultConfig()
	var configFile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			final, err := config.Resolve(agentapp.DefaultConfig(), configFile, cmd.Flags(), agentapp.BindFlags)
			if err != nil {
				return err
			}
			if final.JoinToken == "" && final.JoinTokenFile == "" {
				final.JoinToken = os.Getenv(envJoinToken)
			}
			log, err := logging.New(os.Stderr, final.LogLevel, final.LogFormat)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("join-token") {
				log.Warn("the join token was given on the command line, where every local user can read it (ps) until it is used; use --join-token-file or $" + envJoinToken)
			}
			final.Logger = log
			a, err := agentapp.New(final)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file (flags override it)")
	agentapp.BindFlags(cmd.Flags(), &cfg)
	return cmd
}
