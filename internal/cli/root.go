// Package cli implements tallyctl, the command-line client of the Tally
// server's Admin API.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

const (
	// socketEnv overrides the default of --socket.
	socketEnv     = "TALLY_ADMIN_SOCKET"
	defaultSocket = tallyv1.DefaultAdminSocket
)

// clientFactory returns an Admin client and what to close when the command is
// done with it. ctx bounds the whole command (--timeout).
type clientFactory func(ctx context.Context) (tallyv1.AdminClient, io.Closer, error)

// app is what every command shares: the global flags and the way to reach the
// server.
type app struct {
	socket  string
	output  string
	timeout time.Duration
	// newClient is dialSocket unless a test injects another.
	newClient clientFactory
}

// NewRootCommand returns the tallyctl command tree. It dials the Admin API on
// the Unix socket named by --socket.
func NewRootCommand() *cobra.Command {
	return newRootCommand(nil)
}

// newRootCommand is NewRootCommand with the client factory injectable; nil
// means dial --socket.
func newRootCommand(newClient clientFactory) *cobra.Command {
	a := &app{newClient: newClient}
	if a.newClient == nil {
		a.newClient = a.dialSocket
	}

	socket := os.Getenv(socketEnv)
	if socket == "" {
		socket = defaultSocket
	}

	root := &cobra.Command{
		Use:   "tallyctl",
		Short: "Manage a Tally server through its Admin API",
		Long: `tallyctl manages a Tally server: registration entries, join tokens,
agents and the trust bundle, and mints SVIDs for testing.

It talks to the server's Admin API on a Unix socket; the socket's file
permissions are the authorization.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return a.validate()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{err: err}
	})

	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", socket, "path of the server's Admin API socket (env "+socketEnv+")")
	pf.StringVarP(&a.output, "output", "o", outputText, "output format: text or json")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "give up on the server after this long")

	root.AddCommand(
		a.newEntryCommand(),
		a.newTokenCommand(),
		a.newDashboardCommand(),
		a.newAgentCommand(),
		a.newBundleCommand(),
		a.newAuthorityCommand(),
		a.newX509Command(),
		a.newJWTCommand(),
		a.newHealthcheckCommand(),
		a.newSVIDCommand(),
		a.newExchangeCommand(),
	)
	return root
}

// Execute runs root with ctx and returns the process exit code: 0 on success,
// 1 on any error, which is printed to root's stderr as "Error: <message>".
func Execute(ctx context.Context, root *cobra.Command) int {
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	stderr := root.ErrOrStderr()
	fmt.Fprintf(stderr, "Error: %v\n", err)
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return 1
}

func (a *app) validate() error {
	if a.output != outputText && a.output != outputJSON {
		return usageErrorf("--output %q: want %s or %s", a.output, outputText, outputJSON)
	}
	if a.timeout <= 0 {
		return usageErrorf("--timeout %s: must be positive", a.timeout)
	}
	if a.socket == "" {
		return usageErrorf("--socket is empty")
	}
	return nil
}

// dialSocket is the default clientFactory: an insecure gRPC client on the Unix
// socket --socket. The connection is made on the first call.
func (a *app) dialSocket(context.Context) (tallyv1.AdminClient, io.Closer, error) {
	path, err := filepath.Abs(a.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("socket path %q: %w", a.socket, err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return tallyv1.NewAdminClient(conn), conn, nil
}

// withClient calls fn with an Admin client and a context that ends after
// --timeout, and closes the client afterwards.
func (a *app) withClient(cmd *cobra.Command, fn func(ctx context.Context, client tallyv1.AdminClient) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()

	client, closer, err := a.newClient(ctx)
	if err != nil {
		return err
	}
	defer closer.Close()
	return fn(ctx, client)
}

// render writes v as JSON under -o json, and calls text otherwise.
func (a *app) render(cmd *cobra.Command, v any, text func(w io.Writer) error) error {
	if a.output == outputJSON {
		return writeJSON(cmd.OutOrStdout(), v)
	}
	if err := text(cmd.OutOrStdout()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// apiError is a failed Admin API call. Its message is the server's status
// message (escaped with display) and code name, prefixed with what the call
// was for.
type apiError struct {
	op  string
	err error
	st  *status.Status
}

// rpcError wraps the error of the Admin API call op.
func rpcError(op string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	return &apiError{op: op, err: err, st: st}
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: %s (%s)", e.op, text.Printable(e.st.Message()), e.st.Code())
}

func (e *apiError) Unwrap() error { return e.err }

// GRPCStatus lets status.FromError and status.Code see through the wrapping.
func (e *apiError) GRPCStatus() *status.Status { return e.st }

// usageError is a mistake in the command line; Execute points at --help.
type usageError struct {
	err error
}

func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// exactArgs is cobra.ExactArgs with a usage error naming what is expected.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs with a usage error naming what is expected.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usageErrorf("want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}
