package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// maxHistory is the most issuances the server returns at once.
const maxHistory = 10_000

// failedPrefix starts the detail of a failed issuance (ca/api ListIssuances).
const failedPrefix = "failed: "

func (a *app) newSVIDHistoryCommand() *cobra.Command {
	var (
		spiffeID string
		limit    int
	)
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Show what the server issued for a SPIFFE ID, newest first",
		Long: `Show the server's record of the SVIDs it issued (X.509 and JWT, first
issuances and renewals, through agents and minted), the agent attestations
and the CA rotations, newest first: for --spiffe-id only, else everything.
The server keeps a bounded number of recent events in memory, from its start.

Unlike the other svid commands this one asks the server's Admin API, on the
global --socket.`,
		Example: `  tallyctl svid history --spiffe-id spiffe://example.org/web
  tallyctl svid history --limit 20 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spiffeID != "" {
				if err := checkID("spiffe-id", spiffeID); err != nil {
					return &usageError{err: err}
				}
			}
			if limit < 1 || limit > maxHistory {
				return usageErrorf("--limit %d: want 1 to %d", limit, maxHistory)
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.ListIssuances(ctx, &tallyv1.ListIssuancesRequest{SpiffeId: spiffeID, Limit: int32(limit)})
				if err != nil {
					return rpcError("list issuances", err)
				}
				out := newIssuancesJSON(resp.GetIssuances())
				return a.render(cmd, out, func(w io.Writer) error {
					return writeIssuances(w, out, spiffeID == "")
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&spiffeID, "spiffe-id", "", "only the events of this SPIFFE ID (an agent's ID shows its attestations)")
	fs.IntVar(&limit, "limit", 100, fmt.Sprintf("at most this many events (1 to %d)", maxHistory))
	return cmd
}

// issuancesJSON is the output of svid history.
type issuancesJSON struct {
	Issuances []issuanceJSON `json:"issuances"`
}

// issuanceJSON is one recorded event. Times are RFC 3339 ("" when unset);
// issued_at has nanoseconds.
type issuanceJSON struct {
	Kind      string `json:"kind"`
	SPIFFEID  string `json:"spiffe_id"`
	Serial    string `json:"serial"`
	AgentID   string `json:"agent_id"`
	IssuedAt  string `json:"issued_at"`
	NotBefore string `json:"not_before"`
	NotAfter  string `json:"not_after"`
	KeyID     string `json:"key_id"`
	Renewal   bool   `json:"renewal"`
	Failed    bool   `json:"failed"`
	Detail    string `json:"detail"`
}

func newIssuancesJSON(in []*tallyv1.Issuance) issuancesJSON {
	out := issuancesJSON{Issuances: make([]issuanceJSON, 0, len(in))}
	for _, is := range in {
		detail, failed := strings.CutPrefix(is.GetDetail(), failedPrefix)
		var at string
		if ns := is.GetIssuedAtUnixNano(); ns != 0 {
			at = time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
		}
		out.Issuances = append(out.Issuances, issuanceJSON{
			Kind:      is.GetKind(),
			SPIFFEID:  is.GetSpiffeId(),
			Serial:    is.GetSerial(),
			AgentID:   is.GetAgentId(),
			IssuedAt:  at,
			NotBefore: unixTime(is.GetNotBefore()),
			NotAfter:  unixTime(is.GetNotAfter()),
			KeyID:     is.GetKeyId(),
			Renewal:   is.GetRenewal(),
			Failed:    failed,
			Detail:    detail,
		})
	}
	return out
}

// writeIssuances writes the events as a table, one a row, with a SPIFFE ID
// column if withID, or a line saying there are none.
func writeIssuances(w io.Writer, out issuancesJSON, withID bool) error {
	if len(out.Issuances) == 0 {
		_, err := fmt.Fprintln(w, "No recorded issuances.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	id := ""
	if withID {
		id = "SPIFFE ID\t"
	}
	fmt.Fprintln(tw, "TIME\tKIND\t"+id+"EVENT\tSERIAL\tEXPIRES\tKEY\tAGENT\tDETAIL")
	for _, is := range out.Issuances {
		event := "first"
		switch {
		case is.Failed:
			event = "failed"
		case is.Renewal:
			event = "renewal"
		}
		at := is.IssuedAt
		if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
			at = t.Format(time.RFC3339)
		}
		row := []string{at, is.Kind}
		if withID {
			row = append(row, is.SPIFFEID)
		}
		row = append(row, event, is.Serial, is.NotAfter, is.KeyID, is.AgentID, is.Detail)
		for i, v := range row {
			if v == "" {
				v = "-"
			}
			row[i] = text.Printable(v)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}
