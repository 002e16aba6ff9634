package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultAgentSocket is the agent's Workload API socket when neither
// --socket-path nor SPIFFE_ENDPOINT_SOCKET names one.
const defaultAgentSocket = "/run/tally/agent.sock"

// workloadAPI is what the svid commands share: the global flags and the way
// to reach the agent's Workload API.
type workloadAPI struct {
	*app
	socketPath string
}

func (a *app) newSVIDCommand() *cobra.Command {
	api := &workloadAPI{app: a}
	cmd := &cobra.Command{
		Use:   "svid",
		Short: "Fetch, watch and validate SVIDs through an agent's Workload API",
		Long: `The svid commands are a SPIFFE Workload API client: they get the identities
of this process from the agent as any workload would, so what they show is
what the agent attested tallyctl itself to be.

The agent's socket is --socket-path, else $` + workloadapi.SocketEnv + ` (a
unix:///path URL), else ` + defaultAgentSocket + `. The global --socket names
the server's Admin API and is not used here. --timeout bounds every command
but watch.`,
	}
	cmd.PersistentFlags().StringVar(&api.socketPath, "socket-path", "",
		"path of the agent's Workload API socket (default $"+workloadapi.SocketEnv+", else "+defaultAgentSocket+")")

	fetch := &cobra.Command{
		Use:   "fetch",
		Short: "Fetch X509-SVIDs, JWT-SVIDs or trust bundles once",
	}
	fetch.AddCommand(api.newFetchX509Command(), api.newFetchJWTCommand(), api.newFetchBundleCommand())
	cmd.AddCommand(fetch, api.newWatchCommand(), api.newValidateCommand(), a.newSVIDHistoryCommand())
	return cmd
}

// address returns the Workload API address to dial, as go-spiffe takes it:
// --socket-path (a path, or a unix: URL), else $SPIFFE_ENDPOINT_SOCKET, else
// defaultAgentSocket.
func (api *workloadAPI) address() (string, error) {
	switch {
	case strings.HasPrefix(api.socketPath, "unix:"):
		if err := workloadapi.ValidateAddress(api.socketPath); err != nil {
			return "", &usageError{err: fmt.Errorf("--socket-path %q: %w", api.socketPath, err)}
		}
		return api.socketPath, nil
	case api.socketPath != "":
		path, err := filepath.Abs(api.socketPath)
		if err != nil {
			return "", fmt.Errorf("--socket-path %q: %w", api.socketPath, err)
		}
		return unixURL(path), nil
	}
	if addr := os.Getenv(workloadapi.SocketEnv); addr != "" {
		if err := workloadapi.ValidateAddress(addr); err != nil {
			return "", fmt.Errorf("%s %q: %w", workloadapi.SocketEnv, addr, err)
		}
		return addr, nil
	}
	return unixURL(defaultAgentSocket), nil
}

// unixURL returns the unix:///path URL of the absolute path.
func unixURL(path string) string {
	return (&url.URL{Scheme: "unix", Path: path}).String()
}

// dial returns a Workload API client for address(). It does not wait for the
// connection: an absent agent shows as Unavailable on the first call.
func (api *workloadAPI) dial(ctx context.Context) (*workloadapi.Client, error) {
	addr, err := api.address()
	if err != nil {
		return nil, err
	}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return nil, fmt.Errorf("workload API %s: %w", addr, err)
	}
	return client, nil
}

// withClient calls fn with a Workload API client and a context that ends
// after --timeout, and closes the client afterwards.
func (api *workloadAPI) withClient(cmd *cobra.Command, fn func(ctx context.Context, client *workloadapi.Client) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), api.timeout)
	defer cancel()

	client, err := api.dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	return fn(ctx, client)
}

func (api *workloadAPI) newFetchX509Command() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "x509",
		Short: "Fetch this process's X509-SVIDs and the trust bundles",
		Long: `Fetch the X509-SVIDs and X.509 bundles the agent gives this process, and
print each SVID's SPIFFE ID, hint, expiry and chain length, and the trust
domains of the bundles. -o json adds the chains and bundles as PEM; the
private keys are never printed.

With --write DIR (made 0700 if missing), write for SVID number i, as
spire-agent does:

  svid.<i>.pem    the certificate chain, leaf first
  svid.<i>.key    the private key, PKCS#8, mode 0600
  bundle.<i>.pem  the X.509 authorities of the SVID's trust domain`,
		Example: `  tallyctl svid fetch x509
  tallyctl svid fetch x509 --socket-path /run/tally/agent.sock --write ./svids`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return api.withClient(cmd, func(ctx context.Context, client *workloadapi.Client) error {
				x509Ctx, err := client.FetchX509Context(ctx)
				if err != nil {
					return rpcError("fetch X509-SVIDs", err)
				}
				out := newX509ContextJSON(x509Ctx)
				if dir != "" {
					if err := writeWorkloadSVIDs(dir, x509Ctx, &out); err != nil {
						return err
					}
				}
				return api.render(cmd, out, func(w io.Writer) error {
					return writeX509Context(w, out)
				})
			})
		},
	}
	cmd.Flags().StringVar(&dir, "write", "", "directory to write svid.<i>.pem, svid.<i>.key and bundle.<i>.pem to")
	return cmd
}

// x509ContextJSON is the output of svid fetch x509.
type x509ContextJSON struct {
	SVIDs []x509SVIDJSON `json:"svids"`
	// Bundles are all the X.509 bundles, sorted by trust domain.
	Bundles []x509BundleJSON `json:"bundles"`
}

// x509SVIDJSON is one X509-SVID. It never holds the private key: the paths
// are set when it was written to files.
type x509SVIDJSON struct {
	SPIFFEID  string `json:"spiffe_id"`
	Hint      string `json:"hint"`
	ExpiresAt string `json:"expires_at"`
	// Chain is the certificate chain as PEM, leaf first.
	Chain string `json:"chain"`
	// Bundle is the X.509 authorities of the SVID's trust domain as PEM.
	Bundle     string `json:"bundle"`
	SVIDPath   string `json:"svid_path,omitempty"`
	KeyPath    string `json:"key_path,omitempty"`
	BundlePath string `json:"bundle_path,omitempty"`

	chainLength int
}

// x509BundleJSON is the X.509 bundle of one trust domain.
type x509BundleJSON struct {
	TrustDomain string `json:"trust_domain"`
	// Bundle is the X.509 authorities as PEM.
	Bundle string `json:"bundle"`
}

func newX509ContextJSON(c *workloadapi.X509Context) x509ContextJSON {
	out := x509ContextJSON{
		SVIDs:   make([]x509SVIDJSON, 0, len(c.SVIDs)),
		Bundles: x509BundlesJSON(c.Bundles),
	}
	for _, svid := range c.SVIDs {
		s := x509SVIDJSON{
			SPIFFEID:    svid.ID.String(),
			Hint:        svid.Hint,
			ExpiresAt:   timeText(svid.Certificates[0].NotAfter),
			Chain:       certsPEM(svid.Certificates),
			chainLength: len(svid.Certificates),
		}
		if b, ok := c.Bundles.Get(svid.ID.TrustDomain()); ok {
			s.Bundle = certsPEM(b.X509Authorities())
		}
		out.SVIDs = append(out.SVIDs, s)
	}
	return out
}

func x509BundlesJSON(set *x509bundle.Set) []x509BundleJSON {
	out := []x509BundleJSON{}
	for _, b := range set.Bundles() {
		out = append(out, x509BundleJSON{
			TrustDomain: b.TrustDomain().Name(),
			Bundle:      certsPEM(b.X509Authorities()),
		})
	}
	return out
}

// writeWorkloadSVIDs writes the SVIDs of c into dir, making dir with mode 0700
// if missing, and sets the paths in out, whose SVIDs are those of c in order.
// Each file is replaced atomically; keys have mode 0600, the others 0644.
func writeWorkloadSVIDs(dir string, c *workloadapi.X509Context, out *x509ContextJSON) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make output directory: %w", err)
	}
	for i, svid := range c.SVIDs {
		chainPEM, keyPEM, err := svid.Marshal()
		if err != nil {
			return fmt.Errorf("encode X509-SVID %s: %w", svid.ID, err)
		}
		s := &out.SVIDs[i]
		s.SVIDPath = filepath.Join(dir, fmt.Sprintf("svid.%d.pem", i))
		s.KeyPath = filepath.Join(dir, fmt.Sprintf("svid.%d.key", i))
		s.BundlePath = filepath.Join(dir, fmt.Sprintf("bundle.%d.pem", i))
		for _, f := range []struct {
			path string
			data []byte
			perm os.FileMode
		}{
			{s.KeyPath, keyPEM, 0o600},
			{s.SVIDPath, chainPEM, 0o644},
			{s.BundlePath, []byte(s.Bundle), 0o644},
		} {
			if err := writeFileAtomic(f.path, f.data, f.perm); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeX509Context writes one block of aligned "key: value" lines per SVID,
// then the trust domains of the bundles.
func writeX509Context(w io.Writer, out x509ContextJSON) error {
	f := newFields(w)
	for _, s := range out.SVIDs {
		f.add("SPIFFE ID", s.SPIFFEID)
		f.addIf("Hint", s.Hint)
		f.add("Expires", s.ExpiresAt)
		f.add("Chain length", strconv.Itoa(s.chainLength))
		if s.SVIDPath != "" {
			f.addAll("Files", []string{s.SVIDPath, s.KeyPath, s.BundlePath})
		}
		fmt.Fprintln(f.tw)
	}
	tds := make([]string, 0, len(out.Bundles))
	for _, b := range out.Bundles {
		tds = append(tds, b.TrustDomain)
	}
	f.addAll("Bundles", tds)
	return f.flush()
}

func (api *workloadAPI) newFetchJWTCommand() *cobra.Command {
	var (
		audiences []string
		spiffeID  string
	)
	cmd := &cobra.Command{
		Use:   "jwt",
		Short: "Fetch JWT-SVIDs for audiences",
		Long: `Fetch a JWT-SVID for the audiences for each identity of this process, or
only for --spiffe-id, and print the tokens.`,
		Example: `  tallyctl svid fetch jwt --audience api
  tallyctl svid fetch jwt --audience a --audience b --spiffe-id spiffe://example.org/web -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			audiences = nonEmpty(audiences)
			if len(audiences) == 0 {
				return usageErrorf("--audience is required")
			}
			params := jwtsvid.Params{Audience: audiences[0], ExtraAudiences: audiences[1:]}
			if spiffeID != "" {
				id, err := spiffeid.FromString(spiffeID)
				if err != nil {
					return &usageError{err: fmt.Errorf("--spiffe-id %q: %w", spiffeID, err)}
				}
				params.Subject = id
			}
			return api.withClient(cmd, func(ctx context.Context, client *workloadapi.Client) error {
				svids, err := client.FetchJWTSVIDs(ctx, params)
				if err != nil {
					return rpcError("fetch JWT-SVIDs", err)
				}
				out := jwtSVIDsJSON{SVIDs: make([]jwtSVIDJSON, 0, len(svids))}
				for _, s := range svids {
					out.SVIDs = append(out.SVIDs, jwtSVIDJSON{
						SPIFFEID:  s.ID.String(),
						Hint:      s.Hint,
						ExpiresAt: timeText(s.Expiry),
						Token:     s.Marshal(),
					})
				}
				return api.render(cmd, out, func(w io.Writer) error {
					return writeJWTSVIDs(w, out)
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringArrayVar(&audiences, "audience", nil, "audience of the tokens (required, repeatable)")
	fs.StringVar(&spiffeID, "spiffe-id", "", "fetch only the JWT-SVID of this SPIFFE ID")
	return cmd
}

type jwtSVIDsJSON struct {
	SVIDs []jwtSVIDJSON `json:"svids"`
}

type jwtSVIDJSON struct {
	SPIFFEID  string `json:"spiffe_id"`
	Hint      string `json:"hint"`
	ExpiresAt string `json:"expires_at"`
	Token     string `json:"token"`
}

// writeJWTSVIDs writes one block of aligned "key: value" lines per JWT-SVID,
// separated by blank lines.
func writeJWTSVIDs(w io.Writer, out jwtSVIDsJSON) error {
	f := newFields(w)
	for i, s := range out.SVIDs {
		if i > 0 {
			fmt.Fprintln(f.tw)
		}
		f.add("SPIFFE ID", s.SPIFFEID)
		f.addIf("Hint", s.Hint)
		f.add("Expires", s.ExpiresAt)
		f.add("Token", s.Token)
	}
	return f.flush()
}

func (api *workloadAPI) newFetchBundleCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "bundle",
		Short: "Fetch the X.509 trust bundles",
		Long: `Fetch the X.509 bundles the agent gives this process and print them as PEM,
each trust domain after a "# <trust domain>" line, which PEM readers skip.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return api.withClient(cmd, func(ctx context.Context, client *workloadapi.Client) error {
				set, err := client.FetchX509Bundles(ctx)
				if err != nil {
					return rpcError("fetch X.509 bundles", err)
				}
				out := x509BundleSetJSON{Bundles: x509BundlesJSON(set)}
				return api.render(cmd, out, func(w io.Writer) error {
					for _, b := range out.Bundles {
						if _, err := fmt.Fprintf(w, "# %s\n%s", b.TrustDomain, b.Bundle); err != nil {
							return err
						}
					}
					return nil
				})
			})
		},
	}
}

type x509BundleSetJSON struct {
	Bundles []x509BundleJSON `json:"bundles"`
}

func (api *workloadAPI) newWatchCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "watch",
		Short: "Print a line each time the X509-SVIDs or bundles change",
		Long: `Follow the agent's X.509 updates for this process and print one line per
update: the SPIFFE IDs and expiries of the SVIDs and the trust domains of the
bundles (-o json: one JSON object per line). Runs until interrupted; while
the agent cannot be reached it prints a warning and retries. --timeout does
not apply.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			client, err := api.dial(ctx)
			if err != nil {
				return err
			}
			defer client.Close()

			pr := &x509Printer{
				ctx:    ctx,
				cancel: cancel,
				out:    cmd.OutOrStdout(),
				errOut: cmd.ErrOrStderr(),
				json:   api.output == outputJSON,
			}
			err = client.WatchX509Context(ctx, pr)
			switch {
			case pr.err != nil:
				return pr.err
			case cmd.Context().Err() != nil:
				return nil // interrupted: the normal end
			default:
				return rpcError("watch X509-SVIDs", err)
			}
		},
	}
}

// x509Printer is the workloadapi.X509ContextWatcher of svid watch. go-spiffe
// calls it from the goroutine running WatchX509Context only. On a failed
// write it records the error in err and cancels the watch.
type x509Printer struct {
	ctx    context.Context
	cancel context.CancelFunc
	out    io.Writer
	errOut io.Writer
	json   bool
	err    error
}

// x509UpdateJSON is one line of svid watch -o json.
type x509UpdateJSON struct {
	SVIDs        []x509SVIDSummaryJSON `json:"svids"`
	TrustDomains []string              `json:"trust_domains"`
}

type x509SVIDSummaryJSON struct {
	SPIFFEID  string `json:"spiffe_id"`
	Hint      string `json:"hint"`
	ExpiresAt string `json:"expires_at"`
}

func (p *x509Printer) OnX509ContextUpdate(c *workloadapi.X509Context) {
	u := x509UpdateJSON{SVIDs: make([]x509SVIDSummaryJSON, 0, len(c.SVIDs)), TrustDomains: []string{}}
	for _, svid := range c.SVIDs {
		u.SVIDs = append(u.SVIDs, x509SVIDSummaryJSON{
			SPIFFEID:  svid.ID.String(),
			Hint:      svid.Hint,
			ExpiresAt: timeText(svid.Certificates[0].NotAfter),
		})
	}
	for _, b := range c.Bundles.Bundles() {
		u.TrustDomains = append(u.TrustDomains, b.TrustDomain().Name())
	}

	var line []byte
	if p.json {
		var err error
		if line, err = json.Marshal(u); err != nil {
			p.fail(fmt.Errorf("write json: %w", err))
			return
		}
	} else {
		svids := make([]string, 0, len(u.SVIDs))
		for _, s := range u.SVIDs {
			svids = append(svids, s.SPIFFEID+" (expires "+s.ExpiresAt+")")
		}
		line = []byte("X509-SVIDs: " + strings.Join(svids, ", ") + "; bundles: " + strings.Join(u.TrustDomains, ", "))
	}
	if _, err := p.out.Write(append(line, '\n')); err != nil {
		p.fail(fmt.Errorf("write output: %w", err))
	}
}

// OnX509ContextWatchError reports a failure that go-spiffe retries after, or
// an update it could not parse. Errors that end the watch are left to RunE.
func (p *x509Printer) OnX509ContextWatchError(err error) {
	if p.ctx.Err() != nil || p.err != nil {
		return
	}
	switch status.Code(err) {
	case codes.Canceled, codes.InvalidArgument:
		return
	}
	fmt.Fprintf(p.errOut, "Warning: %v\n", rpcError("watch X509-SVIDs", err))
}

func (p *x509Printer) fail(err error) {
	if p.err == nil {
		p.err = err
	}
	p.cancel()
}

func (api *workloadAPI) newValidateCommand() *cobra.Command {
	var audience, token string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Have the agent validate a JWT-SVID",
		Long: `Ask the agent whether the JWT-SVID --svid is valid for --audience, and print
its SPIFFE ID and claims. Exit 1 if the agent says it is not. --svid - reads
the token from standard input.`,
		Example: `  tallyctl svid validate --audience api --svid eyJhbGciOi...
  tallyctl svid fetch jwt --audience api -o json | jq -r '.svids[0].token' | tallyctl svid validate --audience api --svid -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if audience == "" {
				return usageErrorf("--audience is required")
			}
			if token == "" {
				return usageErrorf("--svid is required")
			}
			svid := token
			if token == "-" {
				data, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("read token from stdin: %w", err)
				}
				if svid = strings.TrimSpace(string(data)); svid == "" {
					return errors.New("read token from stdin: it is empty")
				}
			}
			return api.withClient(cmd, func(ctx context.Context, client *workloadapi.Client) error {
				valid, err := client.ValidateJWTSVID(ctx, svid, audience)
				if err != nil {
					return rpcError("validate JWT-SVID", err)
				}
				out := validatedJSON{SPIFFEID: valid.ID.String(), Claims: valid.Claims}
				return api.render(cmd, out, func(w io.Writer) error {
					claims, err := json.Marshal(out.Claims)
					if err != nil {
						return err
					}
					fmt.Fprintln(w, "SVID is valid.")
					f := newFields(w)
					f.add("SPIFFE ID", out.SPIFFEID)
					f.add("Claims", string(claims))
					return f.flush()
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&audience, "audience", "", "audience the token must be for (required)")
	fs.StringVar(&token, "svid", "", "the JWT-SVID, or - to read it from standard input (required)")
	return cmd
}

type validatedJSON struct {
	SPIFFEID string         `json:"spiffe_id"`
	Claims   map[string]any `json:"claims"`
}

// certsPEM encodes certs as concatenated PEM CERTIFICATE blocks.
func certsPEM(certs []*x509.Certificate) string {
	var b strings.Builder
	for _, c := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.String()
}

// timeText renders t as RFC 3339 in UTC.
func timeText(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}
