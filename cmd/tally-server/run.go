package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	serverapp "github.com/tallyid/tally/internal/app/server"
	"github.com/tallyid/tally/internal/config"
	"github.com/tallyid/tally/internal/logging"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "tally-server",
		Short:         "Tally SPIFFE server: certificate authority, registration, node and admin APIs",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(newRunCommand())
	return root
}

func newRunCommand() *cobra.Command {
	cfg := serverapp.DefaultConfig()
	var configFile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			final, err := resolveConfig(cmd.Flags(), configFile)
			if err != nil {
				return err
			}
			log, err := logging.New(os.Stderr, final.LogLevel, final.LogFormat)
			if err != nil {
				return err
			}
			final.Logger = log
			srv, err := serverapp.New(final)
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file (flags override it)")
	serverapp.BindFlags(cmd.Flags(), &cfg)
	return cmd
}

// resolveConfig applies, in order: defaults, the config file, then every
// flag given on the command line. serverapp.New validates the result.
func resolveConfig(flags *pflag.FlagSet, file string) (serverapp.Config, error) {
	return config.Resolve(serverapp.DefaultConfig(), file, flags, serverapp.BindFlags)
}
