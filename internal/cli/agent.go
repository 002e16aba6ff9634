package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newAgentCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "List, show, evict and ban attested agents",
	}
	cmd.AddCommand(
		a.newAgentListCommand(),
		a.newAgentShowCommand(),
		a.newAgentEvictCommand(),
		a.newAgentBanCommand(),
	)
	return cmd
}

func (a *app) newAgentListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List attested agents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.ListAgents(ctx, &tallyv1.ListAgentsRequest{})
				if err != nil {
					return rpcError("list agents", err)
				}
				return a.render(cmd, agentListJSON(resp.GetAgents()), func(w io.Writer) error {
					return writeAgentTable(w, resp.GetAgents())
				})
			})
		},
	}
}

func (a *app) newAgentShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show SPIFFE_ID",
		Short: "Show an attested agent",
		Args:  exactArgs(1, "one agent SPIFFE ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkAgentID(id); err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				agent, err := client.GetAgent(ctx, &tallyv1.GetAgentRequest{SpiffeId: id})
				if err != nil {
					return rpcError(fmt.Sprintf("get agent %s", id), err)
				}
				return a.render(cmd, newAgentJSON(agent), func(w io.Writer) error {
					return writeAgent(w, agent)
				})
			})
		},
	}
}

func (a *app) newAgentEvictCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "evict SPIFFE_ID",
		Short: "Forget an agent; it must attest again",
		Args:  exactArgs(1, "one agent SPIFFE ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkAgentID(id); err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				if _, err := client.EvictAgent(ctx, &tallyv1.EvictAgentRequest{SpiffeId: id}); err != nil {
					return rpcError(fmt.Sprintf("evict agent %s", id), err)
				}
				return a.render(cmd, evictedJSON{SPIFFEID: id, Evicted: true}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "Agent %s evicted.\n", text.Printable(id))
					return err
				})
			})
		},
	}
}

func (a *app) newAgentBanCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ban SPIFFE_ID",
		Short: "Ban an agent; it can neither renew nor attest again",
		Args:  exactArgs(1, "one agent SPIFFE ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkAgentID(id); err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				agent, err := client.BanAgent(ctx, &tallyv1.BanAgentRequest{SpiffeId: id})
				if err != nil {
					return rpcError(fmt.Sprintf("ban agent %s", id), err)
				}
				return a.render(cmd, newAgentJSON(agent), func(w io.Writer) error {
					if _, err := fmt.Fprintf(w, "Agent %s banned.\n\n", text.Printable(id)); err != nil {
						return err
					}
					return writeAgent(w, agent)
				})
			})
		},
	}
}

// checkAgentID reports whether the argument id is a SPIFFE ID, with a usage
// error if not.
func checkAgentID(id string) error {
	if _, err := spiffeid.FromString(id); err != nil {
		return &usageError{err: fmt.Errorf("agent SPIFFE ID %q: %w", id, err)}
	}
	return nil
}

// agentJSON is an agent in JSON output. Times are RFC 3339, "" when unset.
type agentJSON struct {
	SPIFFEID        string         `json:"spiffe_id"`
	AttestationType string         `json:"attestation_type"`
	SerialNumber    string         `json:"serial_number"`
	ExpiresAt       string         `json:"expires_at"`
	Selectors       []selectorJSON `json:"selectors"`
	Aliases         []string       `json:"aliases"`
	Banned          bool           `json:"banned"`
	AttestedAt      string         `json:"attested_at"`
	RenewedAt       string         `json:"renewed_at"`
}

func newAgentJSON(a *tallyv1.Agent) agentJSON {
	return agentJSON{
		SPIFFEID:        a.GetSpiffeId(),
		AttestationType: a.GetAttestationType(),
		SerialNumber:    a.GetSerialNumber(),
		ExpiresAt:       unixTime(a.GetExpiresAt()),
		Selectors:       selectorsJSON(a.GetSelectors()),
		Aliases:         nonNil(a.GetAliases()),
		Banned:          a.GetBanned(),
		AttestedAt:      unixTime(a.GetAttestedAt()),
		RenewedAt:       unixTime(a.GetRenewedAt()),
	}
}

type agentsJSON struct {
	Agents []agentJSON `json:"agents"`
}

func agentListJSON(agents []*tallyv1.Agent) agentsJSON {
	out := agentsJSON{Agents: make([]agentJSON, 0, len(agents))}
	for _, a := range agents {
		out.Agents = append(out.Agents, newAgentJSON(a))
	}
	return out
}

type evictedJSON struct {
	SPIFFEID string `json:"spiffe_id"`
	Evicted  bool   `json:"evicted"`
}

// writeAgent writes agent as aligned "key: value" lines.
func writeAgent(w io.Writer, agent *tallyv1.Agent) error {
	f := newFields(w)
	f.add("SPIFFE ID", agent.GetSpiffeId())
	f.add("Attestation type", agent.GetAttestationType())
	f.add("Serial number", agent.GetSerialNumber())
	f.add("Expires", unixTime(agent.GetExpiresAt()))
	f.add("Banned", strconv.FormatBool(agent.GetBanned()))
	f.addIf("Attested", unixTime(agent.GetAttestedAt()))
	f.addIf("Renewed", unixTime(agent.GetRenewedAt()))
	f.addAll("Selectors", selectorsText(agent.GetSelectors()))
	f.addAll("Aliases", agent.GetAliases())
	return f.flush()
}

// writeAgentTable writes agents as a table, one agent a row, or a line
// saying there are none.
func writeAgentTable(w io.Writer, agents []*tallyv1.Agent) error {
	if len(agents) == 0 {
		_, err := fmt.Fprintln(w, "No attested agents.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tATTESTATION\tEXPIRES\tBANNED")
	for _, agent := range agents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\n", text.Printable(agent.GetSpiffeId()), text.Printable(agent.GetAttestationType()),
			unixTime(agent.GetExpiresAt()), agent.GetBanned())
	}
	return tw.Flush()
}
