package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyid/tally/internal/text"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func (a *app) newEntryCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "entry",
		Short: "Create, show, list, update and delete registration entries",
	}
	cmd.AddCommand(
		a.newEntryCreateCommand(),
		a.newEntryShowCommand(),
		a.newEntryListCommand(),
		a.newEntryUpdateCommand(),
		a.newEntryDeleteCommand(),
	)
	return cmd
}

func (a *app) newEntryCreateCommand() *cobra.Command {
	var (
		f    entryFlags
		data string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create registration entries",
		Long: `Create one entry from flags, or several from a JSON file with --data.

The file holds {"entries": [...]}; each entry has spiffe_id, parent_id,
selectors ([{"type": "unix", "value": "uid:0"}]), dns_names, hint, admin, and
the TTLs as x509_ttl/jwt_ttl (Go durations, "1h"), x509_ttl_seconds/
jwt_ttl_seconds, or SPIRE's x509_svid_ttl/jwt_svid_ttl (seconds). The
output of 'entry list -o json' is accepted too: its id, revision and
created_at are dropped, as the server assigns them. All entries are created,
or none.`,
		Example: `  tallyctl entry create --parent-id spiffe://example.org/agent/node1 \
      --spiffe-id spiffe://example.org/web --selector unix:uid:1000 --x509-ttl 1h
  tallyctl entry create --data entries.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var entries []*tallyv1.Entry
			if cmd.Flags().Changed("data") {
				if names := f.given(cmd); len(names) > 0 {
					return usageErrorf("--data cannot be combined with --%s", names[0])
				}
				var err error
				if entries, err = readEntryData(cmd.InOrStdin(), data); err != nil {
					return err
				}
			} else {
				edits, err := f.edits(cmd)
				if err != nil {
					return err
				}
				e := &tallyv1.Entry{}
				for _, edit := range edits {
					edit(e)
				}
				if e.SpiffeId == "" {
					return usageErrorf("--spiffe-id is required (or --data)")
				}
				if e.ParentId == "" {
					return usageErrorf("--parent-id is required (or --data)")
				}
				entries = []*tallyv1.Entry{e}
			}

			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: entries})
				if err != nil {
					return rpcError("create entries", err)
				}
				return a.render(cmd, entryListJSON(resp.GetEntries()), func(w io.Writer) error {
					return writeEntries(w, resp.GetEntries())
				})
			})
		},
	}
	f.register(cmd, false)
	cmd.Flags().StringVar(&data, "data", "", `JSON file of entries to create ("-" for stdin)`)
	return cmd
}

func (a *app) newEntryShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a registration entry",
		Args:  exactArgs(1, "one entry ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				e, err := client.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: args[0]})
				if err != nil {
					return rpcError(fmt.Sprintf("get entry %q", args[0]), err)
				}
				return a.render(cmd, newEntryJSON(e), func(w io.Writer) error {
					return writeEntry(w, e)
				})
			})
		},
	}
}

func (a *app) newEntryListCommand() *cobra.Command {
	var (
		spiffeID  string
		parentID  string
		selectors []string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List registration entries, all or those matching the filters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &tallyv1.ListEntriesRequest{BySpiffeId: spiffeID, ByParentId: parentID}
			if spiffeID != "" {
				if err := checkID("spiffe-id", spiffeID); err != nil {
					return &usageError{err: err}
				}
			}
			if parentID != "" {
				if err := checkID("parent-id", parentID); err != nil {
					return &usageError{err: err}
				}
			}
			sels, err := parseSelectors(selectors)
			if err != nil {
				return &usageError{err: err}
			}
			req.BySelectors = sels

			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				entries, err := listEntries(ctx, client, req)
				if err != nil {
					return err
				}
				return a.render(cmd, entryListJSON(entries), func(w io.Writer) error {
					if _, err := fmt.Fprintf(w, "Found %s\n", plural(len(entries), "entry", "entries")); err != nil {
						return err
					}
					if len(entries) == 0 {
						return nil
					}
					if _, err := fmt.Fprintln(w); err != nil {
						return err
					}
					return writeEntries(w, entries)
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&spiffeID, "spiffe-id", "", "only entries with this SPIFFE ID")
	fs.StringVar(&parentID, "parent-id", "", "only entries with this parent ID")
	fs.StringArrayVar(&selectors, "selector", nil, "only entries having this selector, type:value (repeatable; entries must have all)")
	return cmd
}

// listEntries pages through ListEntries until the server returns no next
// page token, and returns the entries of all pages.
func listEntries(ctx context.Context, client tallyv1.AdminClient, req *tallyv1.ListEntriesRequest) ([]*tallyv1.Entry, error) {
	var entries []*tallyv1.Entry
	for {
		resp, err := client.ListEntries(ctx, req)
		if err != nil {
			return nil, rpcError("list entries", err)
		}
		entries = append(entries, resp.GetEntries()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return entries, nil
		}
		if next == req.GetPageToken() {
			return nil, fmt.Errorf("list entries: server returned page token %q again", next)
		}
		req.PageToken = next
	}
}

func (a *app) newEntryUpdateCommand() *cobra.Command {
	var (
		f     entryFlags
		force bool
	)
	cmd := &cobra.Command{
		Use:   "update ID",
		Short: "Change fields of a registration entry",
		Long: `Fetch the entry, change the fields given as flags, and store the whole
entry. Fields without a flag on the command line keep their value;
--selector and --dns replace the whole list.`,
		Example: `  tallyctl entry update 4f1c... --x509-ttl 2h --dns web.example.org`,
		Args:    exactArgs(1, "one entry ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			edits, err := f.edits(cmd)
			if err != nil {
				return err
			}
			if len(edits) == 0 {
				return usageErrorf("nothing to update: give at least one of --spiffe-id, --parent-id, --selector, --x509-ttl, --jwt-ttl, --dns, --hint, --admin")
			}
			id := args[0]
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				e, err := client.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: id})
				if err != nil {
					return rpcError(fmt.Sprintf("get entry %q", id), err)
				}
				for _, edit := range edits {
					edit(e)
				}
				e.Owner = nil // output only: the server keeps it
				updated, err := client.UpdateEntry(ctx, &tallyv1.UpdateEntryRequest{Entry: e, Force: force})
				if err != nil {
					return rpcError(fmt.Sprintf("update entry %q", id), err)
				}
				return a.render(cmd, newEntryJSON(updated), func(w io.Writer) error {
					return writeEntry(w, updated)
				})
			})
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&force, "force", false, forceHelp)
	return cmd
}

// forceHelp is the help of --force of entry update and entry delete.
const forceHelp = "also change an entry the Kubernetes registrar keeps (see Owner); it rewrites the entry when it next reconciles its pod or resource"

func (a *app) newEntryDeleteCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete ID...",
		Short: "Delete registration entries, all or none",
		Args:  minArgs(1, "one or more entry IDs"),
		RunE: func(cmd *cobra.Command, ids []string) error {
			for _, id := range ids {
				if id == "" {
					return usageErrorf("entry ID is empty")
				}
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				if _, err := client.BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: ids, Force: force}); err != nil {
					return rpcError("delete entries", err)
				}
				return a.render(cmd, deletedJSON{Deleted: ids}, func(w io.Writer) error {
					for _, id := range ids {
						if _, err := fmt.Fprintf(w, "Deleted entry %s\n", text.Printable(id)); err != nil {
							return err
						}
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, forceHelp)
	return cmd
}

// entryFlags are the flags of entry create and entry update.
type entryFlags struct {
	spiffeID  string
	parentID  string
	selectors []string
	x509TTL   time.Duration
	jwtTTL    time.Duration
	dnsNames  []string
	hint      string
	admin     bool
}

// entryFlagNames are the names of entryFlags, in the order of the help.
var entryFlagNames = []string{"spiffe-id", "parent-id", "selector", "x509-ttl", "jwt-ttl", "dns", "hint", "admin"}

func (f *entryFlags) register(cmd *cobra.Command, update bool) {
	list := "repeatable"
	if update {
		list = "repeatable; replaces the list"
	}
	fs := cmd.Flags()
	fs.StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID the matching workloads get")
	fs.StringVar(&f.parentID, "parent-id", "", "SPIFFE ID of the agent (or alias) the workloads run under")
	fs.StringArrayVar(&f.selectors, "selector", nil, "selector a workload must have, type:value ("+list+")")
	fs.DurationVar(&f.x509TTL, "x509-ttl", 0, "lifetime of X509-SVIDs, e.g. 1h (0: server default)")
	fs.DurationVar(&f.jwtTTL, "jwt-ttl", 0, "lifetime of JWT-SVIDs, e.g. 5m (0: server default)")
	fs.StringArrayVar(&f.dnsNames, "dns", nil, "DNS name for the X509-SVID ("+list+"; '' for none)")
	fs.StringVar(&f.hint, "hint", "", "hint for workloads choosing among their SVIDs")
	fs.BoolVar(&f.admin, "admin", false, "let the workloads call the Admin API")
}

// given returns the names of the entry flags on the command line.
func (f *entryFlags) given(cmd *cobra.Command) []string {
	var names []string
	for _, name := range entryFlagNames {
		if cmd.Flags().Changed(name) {
			names = append(names, name)
		}
	}
	return names
}

// edits checks the entry flags on the command line and returns one edit of
// an entry for each. Fields whose flag was not given are left alone.
func (f *entryFlags) edits(cmd *cobra.Command) ([]func(*tallyv1.Entry), error) {
	var edits []func(*tallyv1.Entry)
	for _, name := range f.given(cmd) {
		var edit func(*tallyv1.Entry)
		switch name {
		case "spiffe-id":
			if err := checkID(name, f.spiffeID); err != nil {
				return nil, &usageError{err: err}
			}
			edit = func(e *tallyv1.Entry) { e.SpiffeId = f.spiffeID }
		case "parent-id":
			if err := checkID(name, f.parentID); err != nil {
				return nil, &usageError{err: err}
			}
			edit = func(e *tallyv1.Entry) { e.ParentId = f.parentID }
		case "selector":
			sels, err := parseSelectors(f.selectors)
			if err != nil {
				return nil, &usageError{err: err}
			}
			edit = func(e *tallyv1.Entry) { e.Selectors = sels }
		case "x509-ttl":
			sec, err := ttlSeconds(name, f.x509TTL)
			if err != nil {
				return nil, &usageError{err: err}
			}
			edit = func(e *tallyv1.Entry) { e.X509TtlSeconds = sec }
		case "jwt-ttl":
			sec, err := ttlSeconds(name, f.jwtTTL)
			if err != nil {
				return nil, &usageError{err: err}
			}
			edit = func(e *tallyv1.Entry) { e.JwtTtlSeconds = sec }
		case "dns":
			names := nonEmpty(f.dnsNames)
			edit = func(e *tallyv1.Entry) { e.DnsNames = names }
		case "hint":
			edit = func(e *tallyv1.Entry) { e.Hint = f.hint }
		case "admin":
			edit = func(e *tallyv1.Entry) { e.Admin = f.admin }
		}
		edits = append(edits, edit)
	}
	return edits, nil
}

// entryJSON is an entry in JSON output. Times are RFC 3339, "" when unset;
// TTLs are seconds, 0 meaning the server default.
type entryJSON struct {
	ID             string         `json:"id"`
	SPIFFEID       string         `json:"spiffe_id"`
	ParentID       string         `json:"parent_id"`
	Selectors      []selectorJSON `json:"selectors"`
	X509TTLSeconds int64          `json:"x509_ttl_seconds"`
	JWTTTLSeconds  int64          `json:"jwt_ttl_seconds"`
	DNSNames       []string       `json:"dns_names"`
	Hint           string         `json:"hint"`
	Admin          bool           `json:"admin"`
	Owner          *ownerJSON     `json:"owner,omitempty"`
	Revision       uint64         `json:"revision"`
	CreatedAt      string         `json:"created_at"`
}

// ownerJSON is the registrar that keeps an entry.
type ownerJSON struct {
	Cluster string `json:"cluster"`
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Pod     string `json:"pod,omitempty"`
	PodUID  string `json:"pod_uid,omitempty"`
}

func newOwnerJSON(o *tallyv1.EntryOwner) *ownerJSON {
	if o == nil {
		return nil
	}
	return &ownerJSON{Cluster: o.GetCluster(), Kind: o.GetKind(), Name: o.GetName(), Pod: o.GetPod(), PodUID: o.GetPodUid()}
}

// ownerText is "ClusterIdentity web, cluster prod, pod shop/web-1".
func ownerText(o *tallyv1.EntryOwner) string {
	if o == nil {
		return ""
	}
	s := o.GetKind() + " " + o.GetName() + ", cluster " + o.GetCluster()
	if o.GetPod() != "" {
		s += ", pod " + o.GetPod()
	}
	return s
}

func newEntryJSON(e *tallyv1.Entry) entryJSON {
	return entryJSON{
		ID:             e.GetId(),
		SPIFFEID:       e.GetSpiffeId(),
		ParentID:       e.GetParentId(),
		Selectors:      selectorsJSON(e.GetSelectors()),
		X509TTLSeconds: e.GetX509TtlSeconds(),
		JWTTTLSeconds:  e.GetJwtTtlSeconds(),
		DNSNames:       nonNil(e.GetDnsNames()),
		Hint:           e.GetHint(),
		Admin:          e.GetAdmin(),
		Owner:          newOwnerJSON(e.GetOwner()),
		Revision:       e.GetRevision(),
		CreatedAt:      unixTime(e.GetCreatedAt()),
	}
}

// entriesJSON is a list of entries in JSON output. Its shape is also that of
// --data, which accepts it back.
type entriesJSON struct {
	Entries []entryJSON `json:"entries"`
}

func entryListJSON(entries []*tallyv1.Entry) entriesJSON {
	out := entriesJSON{Entries: make([]entryJSON, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, newEntryJSON(e))
	}
	return out
}

type deletedJSON struct {
	Deleted []string `json:"deleted"`
}

// writeEntry writes e as aligned "key: value" lines.
func writeEntry(w io.Writer, e *tallyv1.Entry) error {
	f := newFields(w)
	f.add("Entry ID", e.GetId())
	f.add("SPIFFE ID", e.GetSpiffeId())
	f.add("Parent ID", e.GetParentId())
	f.addAll("Selectors", selectorsText(e.GetSelectors()))
	f.add("X509-SVID TTL", ttlText(e.GetX509TtlSeconds()))
	f.add("JWT-SVID TTL", ttlText(e.GetJwtTtlSeconds()))
	f.addAll("DNS names", e.GetDnsNames())
	f.addIf("Hint", e.GetHint())
	f.add("Admin", strconv.FormatBool(e.GetAdmin()))
	f.addIf("Owner", ownerText(e.GetOwner()))
	f.add("Revision", strconv.FormatUint(e.GetRevision(), 10))
	f.addIf("Created", unixTime(e.GetCreatedAt()))
	return f.flush()
}

// writeEntries writes entries with writeEntry, a blank line between them.
func writeEntries(w io.Writer, entries []*tallyv1.Entry) error {
	for i, e := range entries {
		if i > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		if err := writeEntry(w, e); err != nil {
			return err
		}
	}
	return nil
}

// plural returns "1 entry" or "n entries".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
