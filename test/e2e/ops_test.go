package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

func TestMetricsHealthAndAudit(t *testing.T) {
	t.Parallel()
	s := harness.StartServer(t)
	ctx := context.Background()
	token := s.NewToken(t, "")
	agent, err := s.AttestJoinToken(t, token)
	require.NoError(t, err)
	created, err := s.Admin(t).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{newEntry("spiffe://example.org/m", agent.ID.String(), "uid:1")}})
	require.NoError(t, err)
	entryID := created.GetEntries()[0].GetId()
	key := harness.NewKey(t)
	_, err = agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{EntryId: entryID, Csr: harness.CSR(t, key, []string{"spiffe://example.org/m"}, nil)}}})
	require.NoError(t, err)
	jwt, err := agent.Node.NewJWTSVID(ctx, &tallyv1.NewJWTSVIDRequest{EntryId: entryID, Audience: []string{"a"}})
	require.NoError(t, err)
	_, err = s.Admin(t).BatchDeleteEntries(ctx, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{"no-such-entry"}})
	require.Error(t, err)

	for _, path := range []string{"/livez", "/readyz"} {
		resp, err := http.Get("http://" + s.HealthAddr + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
	resp, err := http.Get("http://" + s.HealthAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metrics := string(body)
	for _, want := range []string{
		`tally_server_svids_issued_total{result="ok",type="x509"}`,
		`tally_server_svids_issued_total{result="ok",type="jwt"} 1`,
		`tally_server_svid_sign_duration_seconds_bucket{type="x509"`,
		`tally_server_entries 1`,
		`tally_server_agents 1`,
		`tally_server_ca_slot_expiry_timestamp_seconds{id=`,
	} {
		require.Contains(t, metrics, want)
	}

	// One audit line per issuance and admin change: who, what, result.
	type line struct {
		Log, Caller, Action, Target, Result string
	}
	var audit []line
	sc := bufio.NewScanner(strings.NewReader(s.Log()))
	for sc.Scan() {
		var l line
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Log == "audit" {
			audit = append(audit, l)
		}
	}
	has := func(action, result, callerPrefix string) {
		t.Helper()
		for _, l := range audit {
			if l.Action == action && l.Result == result && strings.HasPrefix(l.Caller, callerPrefix) {
				return
			}
		}
		t.Fatalf("no audit line %s/%s by %s in %+v", action, result, callerPrefix, audit)
	}
	has("token_create", "ok", "unix pid:")
	has("attest_agent", "ok", "spiffe://example.org/tally/agent/")
	has("entry_create", "ok", "unix pid:")
	has("x509_svid", "ok", agent.ID.String())
	has("jwt_svid", "ok", agent.ID.String())
	has("entry_delete", "error", "unix pid:")

	// Secrets never reach the log.
	log := s.Log()
	require.NotContains(t, log, token)
	require.NotContains(t, log, jwt.GetToken())
	require.NotContains(t, log, "PRIVATE KEY")
}

func TestUpstreamCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{Organization: []string{"Upstream"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rootKey.Public(), rootKey)
	require.NoError(t, err)
	root, _ := x509.ParseCertificate(der)
	keyDER, err := x509.MarshalPKCS8PrivateKey(rootKey)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "upstream.pem"), filepath.Join(dir, "upstream-key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))

	s := harness.StartServer(t, "--upstream-cert-file", certFile, "--upstream-key-file", keyFile)
	bundle := s.Bundle(t)
	require.Len(t, bundle.X509Authorities(), 1)
	require.True(t, bundle.X509Authorities()[0].Equal(root), "the bundle carries the upstream root")

	key := harness.NewKey(t)
	resp, err := s.Admin(t).MintX509SVID(context.Background(), &tallyv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/up", Csr: harness.CSR(t, key, []string{"spiffe://example.org/up"}, nil)})
	require.NoError(t, err)
	chain := parseChain(t, resp.GetCertChain())
	require.Len(t, chain, 2, "leaf and the server's intermediate")
	require.NoError(t, chain[1].CheckSignatureFrom(root), "the intermediate is signed by the upstream CA")
	requireX509SVID(t, chain, spiffeid.RequireFromString("spiffe://example.org/up"), nil, bundle)
}
