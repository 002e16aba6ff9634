package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tallyid/tally/ca/server"
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
	cfg := server.DefaultConfig()
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
			log, err := newLogger(final.LogLevel, final.LogFormat)
			if err != nil {
				return err
			}
			srv, err := server.New(final, log)
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file (flags override it)")
	server.BindFlags(cmd.Flags(), &cfg)
	return cmd
}

// resolveConfig applies, in order: defaults, the config file, then every
// flag given on the command line.
func resolveConfig(flags *pflag.FlagSet, file string) (server.Config, error) {
	cfg := server.DefaultConfig()
	if file != "" {
		if err := server.LoadFile(file, &cfg); err != nil {
			return cfg, err
		}
	}
	overlay := pflag.NewFlagSet("overlay", pflag.ContinueOnError)
	server.BindFlags(overlay, &cfg)
	var err error
	flags.Visit(func(f *pflag.Flag) {
		if f.Name == "config" || err != nil {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			err = overlay.Lookup(f.Name).Value.(pflag.SliceValue).Replace(sv.GetSlice())
			return
		}
		err = overlay.Set(f.Name, f.Value.String())
	})
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, cfg.Validate()
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("config: log_level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
}
