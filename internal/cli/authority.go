package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newAuthorityCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "authority",
		Short: "Show and rotate the CA's X.509 and JWT signing keys",
		Long: `Show and rotate the CA's signing keys by hand. Each kind (x509, jwt) rotates
on its own, and automatically: a new key is prepared (published in the bundle)
at 1/2 of the active key's life and activated at 5/6; the old key stays in
the bundle until it expires. These commands perform the same steps early:

  prepare    publish a new key, which signs nothing yet
  activate   make the prepared key sign, once it has been in the bundle for
             two bundle refresh hints (10 minutes by default), so that every
             agent and workload has it; the active key becomes old
  taint      mark an old key: agents re-mint, with jitter, every SVID it signed
  revoke     remove a prepared or old key from the bundle: nothing it signed
             verifies any more; refused while SVIDs it signed may be
             unexpired, unless --force

Every step is audited by the server.`,
	}
	cmd.AddCommand(a.newAuthorityKindCommand("x509", "X.509 CA keys (they sign X509-SVIDs)"),
		a.newAuthorityKindCommand("jwt", "JWT keys (they sign JWT-SVIDs)"))
	return cmd
}

func (a *app) newAuthorityKindCommand(kind, what string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   kind,
		Short: "Show and rotate the " + what,
	}
	step := func(use, short, long string, args cobra.PositionalArgs, force *bool,
		call func(ctx context.Context, c tallyv1.AdminClient, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error)) *cobra.Command {
		verb, _, _ := strings.Cut(use, " ")
		return &cobra.Command{
			Use:   use,
			Short: short,
			Long:  long,
			Args:  args,
			RunE: func(cmd *cobra.Command, args []string) error {
				req := &tallyv1.AuthorityRequest{Kind: kind}
				if len(args) == 1 {
					req.Id = args[0]
				}
				if force != nil {
					req.Force = *force
				}
				return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
					slot, err := call(ctx, client, req)
					if err != nil {
						return rpcError(strings.TrimSpace(fmt.Sprintf("%s %s key %s", verb, kind, req.Id)), err)
					}
					return a.render(cmd, newSlotJSON(slot), func(w io.Writer) error {
						return writeSlotTable(w, []*tallyv1.AuthoritySlot{slot})
					})
				})
			},
		}
	}
	var force bool
	revoke := step("revoke ID", "Remove a prepared or old key from the bundle",
		`Remove a prepared or old key from the bundle and the server's journal, and
delete its private key. Nothing it signed verifies against the bundle any
more, and the server forgets every verification it remembered of what the
key signed. The active key cannot be revoked: prepare and activate a new key
first. An old key is refused while SVIDs it signed may be unexpired (until
it was retired plus the longest SVID lifetime, or its expiry), unless
--force: those SVIDs then stop verifying at once, agent SVIDs included.`,
		exactArgs(1, "the ID of the key to revoke"), &force,
		func(ctx context.Context, c tallyv1.AdminClient, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
			return c.RevokeAuthority(ctx, req)
		})
	revoke.Flags().BoolVar(&force, "force", false, "revoke even though SVIDs the key signed may be unexpired")

	cmd.AddCommand(
		a.newAuthorityShowCommand(kind),
		step("prepare", "Publish a new key in the bundle; it signs nothing until activated",
			`Make a new key and publish it in the bundle at once; agents pass it on to
every workload. It signs nothing until activated. Refused if a key is already
prepared.`, maxArgs(0, "no arguments"), nil,
			func(ctx context.Context, c tallyv1.AdminClient, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
				return c.PrepareAuthority(ctx, req)
			}),
		step("activate [ID]", "Make the prepared key sign; the active key becomes old",
			`Make the prepared key (ID, or the prepared one) the one that signs; the
active key becomes old and stays in the bundle until it expires. Refused
until the prepared key has been in the bundle for two bundle refresh hints
(10 minutes by default), so that every agent and workload holds it first.`,
			maxArgs(1, "at most one key ID"), nil,
			func(ctx context.Context, c tallyv1.AdminClient, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
				return c.ActivateAuthority(ctx, req)
			}),
		step("taint [ID]", "Mark an old key: agents re-mint what it signed",
			`Mark an old key (ID, or the old one) tainted. It stays in the bundle; every
agent re-mints, with jitter, the SVIDs it signed and stops serving those once
the new ones arrive (a JWT key is only marked: JWT-SVIDs are short-lived).
The active key cannot be tainted: prepare and activate a new key first.`,
			maxArgs(1, "at most one key ID"), nil,
			func(ctx context.Context, c tallyv1.AdminClient, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
				return c.TaintAuthority(ctx, req)
			}),
		revoke,
	)
	return cmd
}

func (a *app) newAuthorityShowCommand(kind string) *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "List the " + kind + " keys: prepared, active and old",
		Args:  maxArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.GetAuthority(ctx, &tallyv1.GetAuthorityRequest{Kind: kind})
				if err != nil {
					return rpcError("get "+kind+" keys", err)
				}
				out := slotsJSON{Slots: make([]slotJSON, 0, len(resp.GetSlots()))}
				for _, s := range resp.GetSlots() {
					out.Slots = append(out.Slots, newSlotJSON(s))
				}
				return a.render(cmd, out, func(w io.Writer) error {
					return writeSlotTable(w, resp.GetSlots())
				})
			})
		},
	}
}

// maxArgs is cobra.MaximumNArgs with a usage error naming what is expected.
func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > n {
			return usageErrorf("want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

// slotJSON is a CA key slot in JSON output. Times are RFC 3339, "" when
// unset.
type slotJSON struct {
	Kind        string `json:"kind"`
	ID          string `json:"id"`
	Status      string `json:"status"`
	NotBefore   string `json:"not_before"`
	NotAfter    string `json:"not_after"`
	ActivatedAt string `json:"activated_at"`
	Tainted     bool   `json:"tainted"`
	TaintedAt   string `json:"tainted_at"`
}

func newSlotJSON(s *tallyv1.AuthoritySlot) slotJSON {
	return slotJSON{
		Kind:        s.GetKind(),
		ID:          s.GetId(),
		Status:      s.GetStatus(),
		NotBefore:   unixTime(s.GetNotBefore()),
		NotAfter:    unixTime(s.GetNotAfter()),
		ActivatedAt: unixTime(s.GetActivatedAt()),
		Tainted:     s.GetTainted(),
		TaintedAt:   unixTime(s.GetTaintedAt()),
	}
}

type slotsJSON struct {
	Slots []slotJSON `json:"slots"`
}

// writeSlotTable writes slots as a table, one slot a row, or a line saying
// there are none.
func writeSlotTable(w io.Writer, slots []*tallyv1.AuthoritySlot) error {
	if len(slots) == 0 {
		_, err := fmt.Fprintln(w, "No keys.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tID\tSTATUS\tNOT AFTER\tTAINTED")
	for _, s := range slots {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", text.Printable(s.GetKind()), text.Printable(s.GetId()),
			text.Printable(s.GetStatus()), unixTime(s.GetNotAfter()), strconv.FormatBool(s.GetTainted()))
	}
	return tw.Flush()
}
