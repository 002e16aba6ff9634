package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"strings"

	"github.com/spf13/cobra"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Values of bundle show --format.
const (
	formatPEM    = "pem"
	formatSPIFFE = "spiffe"
)

func (a *app) newBundleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Show the server's trust bundle",
	}
	cmd.AddCommand(a.newBundleShowCommand())
	return cmd
}

func (a *app) newBundleShowCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the trust bundle of the server's trust domain",
		Long: `Show the trust bundle: with --format pem its X.509 authorities as PEM
CERTIFICATE blocks, with --format spiffe the SPIFFE bundle JSON. With -o json
both are wrapped in an object with the bundle's sequence number.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != formatPEM && format != formatSPIFFE {
				return usageErrorf("--format %q: want %s or %s", format, formatPEM, formatSPIFFE)
			}
			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.GetBundle(ctx, &tallyv1.GetBundleRequest{})
				if err != nil {
					return rpcError("get bundle", err)
				}
				if format == formatSPIFFE {
					return a.renderSPIFFEBundle(cmd, resp)
				}
				if len(resp.GetX509Authorities()) == 0 {
					return errors.New("bundle has no X.509 authorities")
				}
				pems := certificatePEMs(resp.GetX509Authorities())
				v := pemBundleJSON{Sequence: resp.GetSequence(), X509Authorities: pems}
				return a.render(cmd, v, func(w io.Writer) error {
					_, err := io.WriteString(w, strings.Join(pems, ""))
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", formatPEM, "bundle format: pem or spiffe")
	return cmd
}

func (a *app) renderSPIFFEBundle(cmd *cobra.Command, resp *tallyv1.GetBundleResponse) error {
	doc := resp.GetSpiffeBundle()
	if !json.Valid(doc) {
		return errors.New("server returned a SPIFFE bundle that is not JSON")
	}
	v := spiffeBundleJSON{Sequence: resp.GetSequence(), SPIFFEBundle: doc}
	return a.render(cmd, v, func(w io.Writer) error {
		if _, err := w.Write(escapeJSON(doc)); err != nil {
			return err
		}
		if !bytes.HasSuffix(doc, []byte("\n")) {
			_, err := io.WriteString(w, "\n")
			return err
		}
		return nil
	})
}

type pemBundleJSON struct {
	Sequence uint64 `json:"sequence"`
	// X509Authorities holds one PEM CERTIFICATE block each.
	X509Authorities []string `json:"x509_authorities"`
}

type spiffeBundleJSON struct {
	Sequence     uint64          `json:"sequence"`
	SPIFFEBundle json.RawMessage `json:"spiffe_bundle"`
}

// certificatePEMs encodes each DER certificate as a PEM CERTIFICATE block.
func certificatePEMs(ders [][]byte) []string {
	out := make([]string, 0, len(ders))
	for _, der := range ders {
		out = append(out, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	}
	return out
}
