package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tallyid/tally/agent"
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

func newRunCommand() *cobra.Command {
	cfg := agent.DefaultConfig()
	var configFile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			final, err := config.Resolve(agent.DefaultConfig(), configFile, cmd.Flags(), agent.BindFlags)
			if err != nil {
				return err
			}
			if err := final.Validate(); err != nil {
				return err
			}
			log, err := logging.New(os.Stderr, final.LogLevel, final.LogFormat)
			if err != nil {
				return err
			}
			a, err := agent.New(final, log)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file (flags override it)")
	agent.BindFlags(cmd.Flags(), &cfg)
	return cmd
}
