package cli

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestX509Mint(t *testing.T) {
	srv, socket := startAdmin(t)
	dir := filepath.Join(t.TempDir(), "out")

	res := runCLI(t, socket, "", "x509", "mint", "--spiffe-id", "spiffe://example.org/web",
		"--ttl", "2h", "--dns", "web.example.org", "--dns", "web", "--out-dir", dir)
	require.Equal(t, 0, res.code, res.stderr)

	// The request carries a CSR for the ID and DNS names, signed by its key.
	reqs := srv.requests("MintX509SVID")
	require.Len(t, reqs, 1)
	req := reqs[0].(*tallyv1.MintX509SVIDRequest)
	require.Equal(t, "spiffe://example.org/web", req.SpiffeId)
	require.Equal(t, int64(7200), req.TtlSeconds)
	require.Equal(t, []string{"web.example.org", "web"}, req.DnsNames)
	csr, err := x509.ParseCertificateRequest(req.Csr)
	require.NoError(t, err)
	require.NoError(t, csr.CheckSignature())
	require.Len(t, csr.URIs, 1)
	require.Equal(t, "spiffe://example.org/web", csr.URIs[0].String())
	require.Equal(t, []string{"web.example.org", "web"}, csr.DNSNames)

	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	info, err = os.Stat(filepath.Join(dir, "key.pem"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	require.NoError(t, err)
	require.Equal(t, spiffeid.RequireFromString("spiffe://example.org/web"), svid.ID)
	require.Equal(t, []string{"web.example.org", "web"}, svid.Certificates[0].DNSNames)

	bundle, err := x509bundle.Load(testTD, filepath.Join(dir, "bundle.pem"))
	require.NoError(t, err)
	require.True(t, bundle.Equal(srv.authority.Bundle().X509Bundle()), "the server's X.509 authorities")
	_, _, err = x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(testNow))
	require.NoError(t, err)
	require.True(t, testNow.Add(2*time.Hour).Equal(svid.Certificates[0].NotAfter), "not after %s", svid.Certificates[0].NotAfter)
	require.True(t, svid.Certificates[0].PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey), "certifies the key of the CSR")
	require.Len(t, srv.requests("GetBundle"), 1)

	expires := testNow.Add(2 * time.Hour).UTC().Format(time.RFC3339)
	require.Equal(t, "SPIFFE ID:  spiffe://example.org/web\n"+
		"Expires:    "+expires+"\n"+
		"SVID:       "+filepath.Join(dir, "svid.pem")+"\n"+
		"Key:        "+filepath.Join(dir, "key.pem")+"\n"+
		"Bundle:     "+filepath.Join(dir, "bundle.pem")+"\n", res.stdout)
}

func TestX509MintReplacesFiles(t *testing.T) {
	srv, socket := startAdmin(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(keyPath, []byte("old"), 0o644))

	res := runCLI(t, socket, "", "-o", "json", "x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--out-dir", dir)
	require.Equal(t, 0, res.code, res.stderr)

	info, err := os.Stat(keyPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), keyPath)
	require.NoError(t, err)
	_, _, err = x509svid.Verify(svid.Certificates, srv.authority.Bundle(), x509svid.WithTime(testNow))
	require.NoError(t, err)

	var out mintedX509JSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Equal(t, mintedX509JSON{
		SPIFFEID:   "spiffe://example.org/web",
		ExpiresAt:  testNow.Add(time.Hour).UTC().Format(time.RFC3339),
		SVIDPath:   filepath.Join(dir, "svid.pem"),
		KeyPath:    keyPath,
		BundlePath: filepath.Join(dir, "bundle.pem"),
	}, out)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 3, "no temporary files are left behind")
}

func TestX509MintErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "no ID", args: []string{"--out-dir", "x"}, wantErr: "Error: --spiffe-id is required"},
		{name: "no out dir", args: []string{"--spiffe-id", "spiffe://example.org/web"}, wantErr: "Error: --out-dir is required"},
		{name: "bad ttl", args: []string{"--spiffe-id", "spiffe://example.org/web", "--out-dir", "x", "--ttl", "100ms"},
			wantErr: "Error: --ttl 100ms: must be a whole number of seconds"},
		{name: "server refuses", args: []string{"--spiffe-id", "spiffe://example.org/tally/agent/x", "--out-dir", "x"},
			wantErr: "Error: mint X509-SVID: invalid request: spiffe_id: \"spiffe://example.org/tally/agent/x\": the /tally/ path is reserved (InvalidArgument)\n"},
		{name: "server refuses TTL", args: []string{"--spiffe-id", "spiffe://example.org/web", "--out-dir", "x", "--ttl", "5h"},
			wantErr: "(InvalidArgument)\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, socket := startAdmin(t)
			dir := t.TempDir()
			t.Chdir(dir)
			res := runCLI(t, socket, "", append([]string{"x509", "mint"}, tt.args...)...)
			require.Equal(t, 1, res.code)
			require.Contains(t, res.stderr, tt.wantErr)
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries, "nothing is written")
			if strings.HasPrefix(tt.name, "server") {
				require.Len(t, srv.requests("MintX509SVID"), 1)
			} else {
				require.Zero(t, srv.callCount())
			}
		})
	}
}
