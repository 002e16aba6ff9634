package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Names of the files x509 mint writes into --out-dir.
const (
	svidFile   = "svid.pem"
	keyFile    = "key.pem"
	bundleFile = "bundle.pem"
)

func (a *app) newX509Command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "x509",
		Short: "Mint X509-SVIDs",
	}
	cmd.AddCommand(a.newX509MintCommand())
	return cmd
}

func (a *app) newX509MintCommand() *cobra.Command {
	var (
		spiffeID string
		ttl      time.Duration
		dnsNames []string
		outDir   string
	)
	cmd := &cobra.Command{
		Use:   "mint",
		Short: "Mint an X509-SVID for a key made here, and write it to files",
		Long: `Make a P-256 key, have the server certify it for the SPIFFE ID, and write
into --out-dir (made 0700 if missing):

  svid.pem    the certificate chain, leaf first
  key.pem     the private key, PKCS#8, mode 0600
  bundle.pem  the X.509 authorities of the trust bundle`,
		Example: `  tallyctl x509 mint --spiffe-id spiffe://example.org/test --ttl 1h --out-dir ./svid`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if spiffeID == "" {
				return usageErrorf("--spiffe-id is required")
			}
			id, err := spiffeid.FromString(spiffeID)
			if err != nil {
				return &usageError{err: fmt.Errorf("--spiffe-id %q: %w", spiffeID, err)}
			}
			if outDir == "" {
				return usageErrorf("--out-dir is required")
			}
			sec, err := ttlSeconds("ttl", ttl)
			if err != nil {
				return &usageError{err: err}
			}
			dnsNames = nonEmpty(dnsNames)
			key, csr, err := newCSR(id, dnsNames)
			if err != nil {
				return err
			}

			return a.withClient(cmd, func(ctx context.Context, client tallyv1.AdminClient) error {
				resp, err := client.MintX509SVID(ctx, &tallyv1.MintX509SVIDRequest{
					SpiffeId:   id.String(),
					Csr:        csr,
					TtlSeconds: sec,
					DnsNames:   dnsNames,
				})
				if err != nil {
					return rpcError("mint X509-SVID", err)
				}
				svid, err := parseMintedSVID(resp.GetCertChain(), key, id)
				if err != nil {
					return err
				}
				bundle, err := client.GetBundle(ctx, &tallyv1.GetBundleRequest{})
				if err != nil {
					return rpcError("get bundle", err)
				}
				if len(bundle.GetX509Authorities()) == 0 {
					return errors.New("bundle has no X.509 authorities")
				}
				out, err := writeSVIDFiles(outDir, svid, []byte(strings.Join(certificatePEMs(bundle.GetX509Authorities()), "")))
				if err != nil {
					return err
				}
				return a.render(cmd, out, func(w io.Writer) error {
					return writeMintedX509(w, out)
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID of the SVID (required)")
	fs.DurationVar(&ttl, "ttl", 0, "lifetime of the SVID, e.g. 1h (0: server default)")
	fs.StringArrayVar(&dnsNames, "dns", nil, "DNS name for the SVID (repeatable)")
	fs.StringVar(&outDir, "out-dir", "", "directory to write svid.pem, key.pem and bundle.pem to (required)")
	return cmd
}

// newCSR makes a P-256 key and a PKCS#10 CSR (DER) for it with id as URI SAN
// and dnsNames as DNS SANs.
func newCSR(id spiffeid.ID, dnsNames []string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs:     []*url.URL{id.URL()},
		DNSNames: dnsNames,
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, csr, nil
}

// parseMintedSVID checks that chain (DER, leaf first) is an X509-SVID for id
// certifying key, and returns it with the key.
func parseMintedSVID(chain [][]byte, key crypto.Signer, id spiffeid.ID) (*x509svid.SVID, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	svid, err := x509svid.ParseRaw(bytes.Join(chain, nil), keyDER)
	if err != nil {
		return nil, fmt.Errorf("server returned a bad X509-SVID: %w", err)
	}
	if svid.ID != id {
		return nil, fmt.Errorf("server returned an X509-SVID for %s, want %s", svid.ID, id)
	}
	return svid, nil
}

// mintedX509JSON says what x509 mint wrote; it is also the JSON output.
type mintedX509JSON struct {
	SPIFFEID   string `json:"spiffe_id"`
	ExpiresAt  string `json:"expires_at"`
	SVIDPath   string `json:"svid_path"`
	KeyPath    string `json:"key_path"`
	BundlePath string `json:"bundle_path"`
}

// writeSVIDFiles writes svid's chain and key and bundlePEM into dir, making
// dir with mode 0700 if missing. Each file is replaced atomically; key.pem has
// mode 0600, the others 0644.
func writeSVIDFiles(dir string, svid *x509svid.SVID, bundlePEM []byte) (mintedX509JSON, error) {
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return mintedX509JSON{}, fmt.Errorf("encode X509-SVID: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return mintedX509JSON{}, fmt.Errorf("make output directory: %w", err)
	}
	out := mintedX509JSON{
		SPIFFEID:   svid.ID.String(),
		ExpiresAt:  svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339),
		SVIDPath:   filepath.Join(dir, svidFile),
		KeyPath:    filepath.Join(dir, keyFile),
		BundlePath: filepath.Join(dir, bundleFile),
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{out.KeyPath, keyPEM, 0o600},
		{out.SVIDPath, certPEM, 0o644},
		{out.BundlePath, bundlePEM, 0o644},
	} {
		if err := writeFileAtomic(f.path, f.data, f.perm); err != nil {
			return mintedX509JSON{}, err
		}
	}
	return out, nil
}

// writeFileAtomic replaces path with data and mode perm: it writes a
// temporary file (mode 0600 until chmod) beside path and renames it.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeMintedX509 writes what x509 mint wrote as aligned "key: value" lines.
func writeMintedX509(w io.Writer, out mintedX509JSON) error {
	f := newFields(w)
	f.add("SPIFFE ID", out.SPIFFEID)
	f.add("Expires", out.ExpiresAt)
	f.add("SVID", out.SVIDPath)
	f.add("Key", out.KeyPath)
	f.add("Bundle", out.BundlePath)
	return f.flush()
}
