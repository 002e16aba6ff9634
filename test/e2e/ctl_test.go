package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// ctlEntry is an entry as tallyctl prints it with -o json.
type ctlEntry struct {
	ID        string `json:"id"`
	SPIFFEID  string `json:"spiffe_id"`
	ParentID  string `json:"parent_id"`
	Selectors []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"selectors"`
	X509TTLSeconds int64    `json:"x509_ttl_seconds"`
	JWTTTLSeconds  int64    `json:"jwt_ttl_seconds"`
	DNSNames       []string `json:"dns_names"`
	Hint           string   `json:"hint"`
	Admin          bool     `json:"admin"`
	Revision       uint64   `json:"revision"`
	CreatedAt      string   `json:"created_at"`
}

func (e ctlEntry) selectors() []string {
	var out []string
	for _, s := range e.Selectors {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

// ctlAgent is an agent as tallyctl prints it with -o json.
type ctlAgent struct {
	SPIFFEID        string `json:"spiffe_id"`
	AttestationType string `json:"attestation_type"`
	SerialNumber    string `json:"serial_number"`
	ExpiresAt       string `json:"expires_at"`
	Selectors       []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"selectors"`
	Aliases    []string `json:"aliases"`
	Banned     bool     `json:"banned"`
	AttestedAt string   `json:"attested_at"`
	RenewedAt  string   `json:"renewed_at"`
}

// ctlOK runs tallyctl against srv, requires success and returns stdout.
func ctlOK(t *testing.T, srv *harness.Server, args ...string) string {
	t.Helper()
	stdout, stderr, err := srv.Ctl(append([]string{"--timeout", "20s"}, args...)...)
	require.NoError(t, err, "tallyctl %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), stdout, stderr)
	return stdout
}

// ctlFail runs tallyctl against srv, requires a non-zero exit and returns
// stdout and stderr.
func ctlFail(t *testing.T, srv *harness.Server, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := srv.Ctl(append([]string{"--timeout", "20s"}, args...)...)
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "tallyctl %s succeeded:\n%s", strings.Join(args, " "), stdout)
	require.NotZero(t, exit.ExitCode())
	return stdout, stderr
}

// ctlJSON decodes tallyctl's JSON output strictly into v.
func ctlJSON(t *testing.T, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(v), "output: %s", out)
}

func ctlEntries(t *testing.T, out string) []ctlEntry {
	t.Helper()
	var v struct {
		Entries []ctlEntry `json:"entries"`
	}
	ctlJSON(t, out, &v)
	return v.Entries
}

func TestCtlEntryLifecycle(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()
	const (
		web    = "spiffe://example.org/ctl/web"
		parent = "spiffe://example.org/agent/ctl-node"
	)

	created := ctlEntries(t, ctlOK(t, srv, "entry", "create", "--spiffe-id", web, "--parent-id", parent,
		"--selector", "unix:uid:0", "--selector", "unix:gid:0", "--x509-ttl", "1h", "--jwt-ttl", "5m",
		"--dns", "Web.example.org", "--hint", "web", "-o", "json"))
	require.Len(t, created, 1)
	e := created[0]
	require.NotEmpty(t, e.ID)
	require.Equal(t, web, e.SPIFFEID)
	require.Equal(t, parent, e.ParentID)
	require.Equal(t, []string{"unix:gid:0", "unix:uid:0"}, e.selectors())
	require.Equal(t, int64(3600), e.X509TTLSeconds)
	require.Equal(t, int64(300), e.JWTTTLSeconds)
	require.Equal(t, []string{"web.example.org"}, e.DNSNames)
	require.Equal(t, "web", e.Hint)
	require.False(t, e.Admin)
	_, err := time.Parse(time.RFC3339, e.CreatedAt)
	require.NoError(t, err)

	// A second entry that the selector filter must leave out.
	other := ctlEntries(t, ctlOK(t, srv, "entry", "create", "--spiffe-id", "spiffe://example.org/ctl/other",
		"--parent-id", parent, "--selector", "unix:uid:1", "-o", "json"))
	require.Len(t, other, 1)

	t.Run("show", func(t *testing.T) {
		var shown ctlEntry
		ctlJSON(t, ctlOK(t, srv, "entry", "show", e.ID, "-o", "json"), &shown)
		require.Equal(t, e, shown)

		text := ctlOK(t, srv, "entry", "show", e.ID)
		for _, want := range []string{e.ID, web, parent, "unix:uid:0", "unix:gid:0", "web.example.org", "1h", "5m"} {
			require.Contains(t, text, want)
		}
	})

	t.Run("list by selector", func(t *testing.T) {
		listed := ctlEntries(t, ctlOK(t, srv, "entry", "list", "--selector", "unix:uid:0", "-o", "json"))
		require.Len(t, listed, 1)
		require.Equal(t, e, listed[0])

		listed = ctlEntries(t, ctlOK(t, srv, "entry", "list", "--selector", "unix:uid:0", "--selector", "unix:gid:1", "-o", "json"))
		require.Empty(t, listed, "entries must have all the selectors")

		listed = ctlEntries(t, ctlOK(t, srv, "entry", "list", "--parent-id", parent, "-o", "json"))
		require.Len(t, listed, 2)

		require.Contains(t, ctlOK(t, srv, "entry", "list", "--selector", "unix:uid:0"), "Found 1 entry")
	})

	t.Run("update dns", func(t *testing.T) {
		var updated ctlEntry
		ctlJSON(t, ctlOK(t, srv, "entry", "update", e.ID, "--dns", "a.example.org", "-o", "json"), &updated)
		require.Equal(t, []string{"a.example.org"}, updated.DNSNames)
		require.Greater(t, updated.Revision, e.Revision)
		// Everything else is kept.
		want := e
		want.DNSNames, want.Revision = updated.DNSNames, updated.Revision
		require.Equal(t, want, updated)

		got, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: e.ID})
		require.NoError(t, err)
		require.Equal(t, []string{"a.example.org"}, got.GetDnsNames())
		require.Equal(t, int64(3600), got.GetX509TtlSeconds())
		require.Len(t, got.GetSelectors(), 2)
	})

	t.Run("update to a bad value changes nothing", func(t *testing.T) {
		before, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: e.ID})
		require.NoError(t, err)
		_, stderr := ctlFail(t, srv, "entry", "update", e.ID, "--x509-ttl", "1000h")
		require.Contains(t, stderr, "x509_ttl")
		require.Contains(t, stderr, "InvalidArgument")
		after, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: e.ID})
		require.NoError(t, err)
		require.Equal(t, before.GetRevision(), after.GetRevision())
	})

	t.Run("delete", func(t *testing.T) {
		out := ctlOK(t, srv, "entry", "delete", e.ID)
		require.Contains(t, out, e.ID)
		_, err := admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: e.ID})
		admRequireStatus(t, err, codes.NotFound)

		_, stderr := ctlFail(t, srv, "entry", "show", e.ID)
		require.Contains(t, stderr, "NotFound")
		_, stderr = ctlFail(t, srv, "entry", "delete", e.ID, other[0].ID)
		require.Contains(t, stderr, "NotFound")
		_, err = admin.GetEntry(ctx, &tallyv1.GetEntryRequest{Id: other[0].ID})
		require.NoError(t, err, "a failed batch delete deleted an entry")
	})

	t.Run("create from SPIRE-style JSON", func(t *testing.T) {
		data := `{
  "entries": [
    {
      "spiffe_id": "spiffe://example.org/spire/blog",
      "parent_id": "spiffe://example.org/agent/ctl-node",
      "selectors": [{"type": "unix", "value": "uid:111"}],
      "x509_svid_ttl": 200,
      "jwt_svid_ttl": 30
    },
    {
      "spiffe_id": "spiffe://example.org/spire/db",
      "parent_id": "spiffe://example.org/agent/ctl-node",
      "selectors": [{"type": "unix", "value": "uid:222"}, {"type": "unix", "value": "path:/usr/bin/db"}],
      "dns_names": ["db.example.org"],
      "hint": "db"
    },
    {
      "spiffe_id": "spiffe://example.org/spire/ops",
      "parent_id": "spiffe://example.org/agent/ctl-node",
      "selectors": [{"type": "k8s", "value": "ns:ops"}, {"type": "k8s", "value": "sa:admin"}],
      "admin": true
    }
  ]
}`
		path := filepath.Join(t.TempDir(), "entries.json")
		require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
		out := ctlEntries(t, ctlOK(t, srv, "entry", "create", "--data", path, "-o", "json"))
		require.Len(t, out, 3)

		byID := map[string]ctlEntry{}
		for _, e := range ctlEntries(t, ctlOK(t, srv, "entry", "list", "--parent-id", parent, "-o", "json")) {
			byID[e.SPIFFEID] = e
		}
		blog, db, ops := byID["spiffe://example.org/spire/blog"], byID["spiffe://example.org/spire/db"], byID["spiffe://example.org/spire/ops"]
		require.Equal(t, int64(200), blog.X509TTLSeconds)
		require.Equal(t, int64(30), blog.JWTTTLSeconds)
		require.Equal(t, []string{"unix:uid:111"}, blog.selectors())
		require.Equal(t, []string{"unix:path:/usr/bin/db", "unix:uid:222"}, db.selectors())
		require.Equal(t, []string{"db.example.org"}, db.DNSNames)
		require.Equal(t, "db", db.Hint)
		require.True(t, ops.Admin)
		require.False(t, blog.Admin)

		// The list output is accepted back; the entries exist already.
		listPath := filepath.Join(t.TempDir(), "list.json")
		require.NoError(t, os.WriteFile(listPath, []byte(ctlOK(t, srv, "entry", "list", "--parent-id", parent, "-o", "json")), 0o600))
		_, stderr := ctlFail(t, srv, "entry", "create", "--data", listPath)
		require.Contains(t, stderr, "AlreadyExists")
	})

	t.Run("create from JSON with one bad entry creates none", func(t *testing.T) {
		data := `{"entries": [
  {"spiffe_id": "spiffe://example.org/spire/x1", "parent_id": "spiffe://example.org/agent/ctl-node", "selectors": [{"type": "unix", "value": "uid:1"}]},
  {"spiffe_id": "spiffe://example.org/spire/x2", "parent_id": "spiffe://example.org/agent/ctl-node", "selectors": [{"type": "unix", "value": "uid:abc"}]}
]}`
		path := filepath.Join(t.TempDir(), "bad.json")
		require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
		before := len(admListAll(t, admin))
		_, stderr := ctlFail(t, srv, "entry", "create", "--data", path)
		require.Contains(t, stderr, "unix:uid:abc")
		require.Len(t, admListAll(t, admin), before)
	})
}

func TestCtlEntryErrors(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	const parent = "spiffe://example.org/agent/ctl-node"
	create := []string{"entry", "create", "--spiffe-id", "spiffe://example.org/ctl/bad", "--parent-id", parent}

	cases := []struct {
		name string
		args []string
		// want must all appear in stderr.
		want []string
	}{
		{"selector without colon", append(slices.Clone(create), "--selector", "unixuid0"), []string{"selector", "unixuid0"}},
		{"selector with empty value", append(slices.Clone(create), "--selector", "unix:"), []string{"selector", "unix:"}},
		{"selector with non-numeric uid", append(slices.Clone(create), "--selector", "unix:uid:abc"), []string{"selector", "unix:uid:abc", "InvalidArgument"}},
		{"selector with unknown key", append(slices.Clone(create), "--selector", "unix:foo:1"), []string{"selector", "unix:foo:1"}},
		{"no selector", slices.Clone(create), []string{"selector"}},
		{"sub-second x509 ttl", append(slices.Clone(create), "--selector", "unix:uid:0", "--x509-ttl", "500ms"), []string{"x509-ttl"}},
		{"sub-second jwt ttl", append(slices.Clone(create), "--selector", "unix:uid:0", "--jwt-ttl", "1500ms"), []string{"jwt-ttl"}},
		{"negative x509 ttl", append(slices.Clone(create), "--selector", "unix:uid:0", "--x509-ttl=-1h"), []string{"x509-ttl"}},
		{"huge x509 ttl", append(slices.Clone(create), "--selector", "unix:uid:0", "--x509-ttl", "1000h"), []string{"x509_ttl"}},
		{"bad dns name", append(slices.Clone(create), "--selector", "unix:uid:0", "--dns", "bad_name.example.org"), []string{"dns_names", "bad_name.example.org"}},
		{"malformed spiffe id", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a/../b", "--parent-id", parent, "--selector", "unix:uid:0"},
			[]string{"spiffe-id"}},
		{"missing parent id", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/ctl/bad", "--selector", "unix:uid:0"}, []string{"parent-id"}},
		{"list by bad selector", []string{"entry", "list", "--selector", "unix:foo:1"}, []string{"selector", "unix:foo:1"}},
		{"list by selector without colon", []string{"entry", "list", "--selector", "nocolon"}, []string{"selector", "nocolon"}},
		{"token with ttl above 24h", []string{"token", "generate", "--ttl", "25h"}, []string{"ttl"}},
		{"token alias in another trust domain", []string{"token", "generate", "--spiffe-id", "spiffe://example.com/n"}, []string{"spiffe_id"}},
		{"bad output format", []string{"entry", "list", "-o", "yaml"}, []string{"yaml"}},
		{"bad bundle format", []string{"bundle", "show", "--format", "der"}, []string{"der"}},
		{"jwt mint without audience", []string{"jwt", "mint", "--spiffe-id", "spiffe://example.org/ctl/j"}, []string{"audience"}},
		{"x509 mint without out dir", []string{"x509", "mint", "--spiffe-id", "spiffe://example.org/ctl/x"}, []string{"out-dir"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := admMarkStore(t, admin)
			stdout, stderr := ctlFail(t, srv, tc.args...)
			for _, w := range tc.want {
				require.Contains(t, stderr, w)
			}
			require.NotContains(t, stdout, "Entry ID", "an entry was printed")
			admRequireUnchanged(t, admin, before)
		})
	}
}

func TestCtlTokensAndAgents(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	const alias = "spiffe://example.org/nodes/ctl-1"

	out := ctlOK(t, srv, "token", "generate", "--spiffe-id", alias, "-o", "json")
	var fields map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &fields))
	require.ElementsMatch(t, []string{"token", "expires_at", "spiffe_id"}, slices.Collect(maps.Keys(fields)))
	var tok struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
		SPIFFEID  string    `json:"spiffe_id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &tok))
	require.NotEmpty(t, tok.Token)
	require.Equal(t, alias, tok.SPIFFEID)
	require.True(t, tok.ExpiresAt.After(time.Now()), "expires_at %s", tok.ExpiresAt)
	require.False(t, tok.ExpiresAt.After(time.Now().Add(10*time.Minute)), "default ttl is 10m, expires_at %s", tok.ExpiresAt)

	agent, err := srv.AttestJoinToken(t, tok.Token)
	require.NoError(t, err)
	other, err := srv.AttestJoinToken(t, srv.NewToken(t, ""))
	require.NoError(t, err)
	renew := func(a *harness.Agent) error {
		_, err := a.Node.RenewAgent(context.Background(), &tallyv1.RenewAgentRequest{Csr: harness.CSR(t, harness.NewKey(t), nil, nil)})
		return err
	}
	require.NoError(t, renew(agent))
	require.NoError(t, renew(other))

	t.Run("list", func(t *testing.T) {
		var list struct {
			Agents []ctlAgent `json:"agents"`
		}
		ctlJSON(t, ctlOK(t, srv, "agent", "list", "-o", "json"), &list)
		byID := map[string]ctlAgent{}
		for _, a := range list.Agents {
			byID[a.SPIFFEID] = a
		}
		require.Len(t, byID, 2)
		got, ok := byID[agent.ID.String()]
		require.True(t, ok, "agent %s not listed: %v", agent.ID, list.Agents)
		require.Equal(t, "join_token", got.AttestationType)
		require.Equal(t, []string{alias}, got.Aliases)
		require.False(t, got.Banned)
		require.Contains(t, byID, other.ID.String())

		text := ctlOK(t, srv, "agent", "list")
		require.Contains(t, text, agent.ID.String())
		require.Contains(t, text, other.ID.String())
	})

	t.Run("show", func(t *testing.T) {
		var got ctlAgent
		ctlJSON(t, ctlOK(t, srv, "agent", "show", agent.ID.String(), "-o", "json"), &got)
		require.Equal(t, agent.ID.String(), got.SPIFFEID)
		require.Equal(t, []string{alias}, got.Aliases)
		require.False(t, got.Banned)
		_, err := time.Parse(time.RFC3339, got.ExpiresAt)
		require.NoError(t, err)
		require.NotEmpty(t, got.SerialNumber)

		_, stderr := ctlFail(t, srv, "agent", "show", "spiffe://example.org/tally/agent/join_token/nobody")
		require.Contains(t, stderr, "NotFound")
	})

	t.Run("ban", func(t *testing.T) {
		var got ctlAgent
		ctlJSON(t, ctlOK(t, srv, "agent", "ban", agent.ID.String(), "-o", "json"), &got)
		require.True(t, got.Banned)
		admRequireStatus(t, renew(agent), codes.PermissionDenied)
		_, err := agent.Node.NewJWTSVID(context.Background(), &tallyv1.NewJWTSVIDRequest{EntryId: "x", Audience: []string{"a"}})
		admRequireStatus(t, err, codes.PermissionDenied)

		ctlJSON(t, ctlOK(t, srv, "agent", "show", agent.ID.String(), "-o", "json"), &got)
		require.True(t, got.Banned, "ban is stored")
		require.NoError(t, renew(other), "banning one agent affects another")
	})

	t.Run("evict", func(t *testing.T) {
		out := ctlOK(t, srv, "agent", "evict", other.ID.String())
		require.Contains(t, out, other.ID.String())
		admRequireStatus(t, renew(other), codes.PermissionDenied)
		_, stderr := ctlFail(t, srv, "agent", "show", other.ID.String())
		require.Contains(t, stderr, "NotFound")
		_, stderr = ctlFail(t, srv, "agent", "evict", other.ID.String())
		require.Contains(t, stderr, "NotFound")
	})

	t.Run("bad agent id", func(t *testing.T) {
		for _, cmd := range []string{"show", "ban", "evict"} {
			_, stderr := ctlFail(t, srv, "agent", cmd, "not-a-spiffe-id")
			require.Contains(t, stderr, "not-a-spiffe-id")
		}
	})
}

func TestCtlBundleAndMint(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	resp, err := srv.Admin(t).GetBundle(context.Background(), &tallyv1.GetBundleRequest{})
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetX509Authorities())

	t.Run("bundle show --format pem", func(t *testing.T) {
		rest := []byte(ctlOK(t, srv, "bundle", "show", "--format", "pem"))
		var ders [][]byte
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			require.Equal(t, "CERTIFICATE", block.Type)
			c, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			require.True(t, c.IsCA)
			ders = append(ders, block.Bytes)
		}
		require.Empty(t, bytes.TrimSpace(rest), "trailing data after the PEM blocks")
		require.Equal(t, resp.GetX509Authorities(), ders)
	})

	var spiffeBundle *spiffebundle.Bundle
	t.Run("bundle show --format spiffe", func(t *testing.T) {
		out := ctlOK(t, srv, "bundle", "show", "--format", "spiffe")
		b, err := spiffebundle.Parse(srv.TrustDomain, []byte(out))
		require.NoError(t, err)
		var ders [][]byte
		for _, c := range b.X509Authorities() {
			ders = append(ders, c.Raw)
		}
		require.Equal(t, resp.GetX509Authorities(), ders)
		require.NotEmpty(t, b.JWTAuthorities())
		seq, ok := b.SequenceNumber()
		require.True(t, ok)
		require.Equal(t, resp.GetSequence(), seq)
		require.True(t, b.Equal(srv.Bundle(t)))
		spiffeBundle = b
	})

	t.Run("x509 mint --out-dir", func(t *testing.T) {
		const id = "spiffe://example.org/ctl/minted"
		dir := filepath.Join(t.TempDir(), "out", "svid")
		var out struct {
			SPIFFEID   string    `json:"spiffe_id"`
			ExpiresAt  time.Time `json:"expires_at"`
			SVIDPath   string    `json:"svid_path"`
			KeyPath    string    `json:"key_path"`
			BundlePath string    `json:"bundle_path"`
		}
		ctlJSON(t, ctlOK(t, srv, "x509", "mint", "--spiffe-id", id, "--dns", "minted.example.org",
			"--ttl", "10m", "--out-dir", dir, "-o", "json"), &out)
		require.Equal(t, id, out.SPIFFEID)
		require.Equal(t, filepath.Join(dir, "svid.pem"), out.SVIDPath)
		require.Equal(t, filepath.Join(dir, "key.pem"), out.KeyPath)
		require.Equal(t, filepath.Join(dir, "bundle.pem"), out.BundlePath)

		fi, err := os.Stat(out.KeyPath)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "key.pem mode")
		fi, err = os.Stat(dir)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "new --out-dir mode")
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		require.ElementsMatch(t, []string{"svid.pem", "key.pem", "bundle.pem"}, names, "no temporary files left")

		svid, err := x509svid.Load(out.SVIDPath, out.KeyPath)
		require.NoError(t, err, "svid.pem and key.pem must form an SVID with a matching key")
		bundle, err := x509bundle.Load(srv.TrustDomain, out.BundlePath)
		require.NoError(t, err)
		gotID, _, err := x509svid.Verify(svid.Certificates, bundle)
		require.NoError(t, err)
		require.Equal(t, id, gotID.String())
		leaf := svid.Certificates[0]
		require.Equal(t, []string{"minted.example.org"}, leaf.DNSNames)
		require.LessOrEqual(t, leaf.NotAfter.Sub(leaf.NotBefore), 10*time.Minute+time.Minute, "--ttl 10m")
		require.True(t, out.ExpiresAt.Equal(leaf.NotAfter.Truncate(time.Second)))

		// Minting again replaces the files.
		ctlOK(t, srv, "x509", "mint", "--spiffe-id", id, "--out-dir", dir)
		again, err := x509svid.Load(out.SVIDPath, out.KeyPath)
		require.NoError(t, err)
		require.NotEqual(t, leaf.SerialNumber, again.Certificates[0].SerialNumber)
	})

	t.Run("x509 mint refused", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "never")
		_, stderr := ctlFail(t, srv, "x509", "mint", "--spiffe-id", "spiffe://example.com/ctl/x", "--out-dir", dir)
		require.Contains(t, stderr, "InvalidArgument")
		_, err := os.Stat(dir)
		require.True(t, os.IsNotExist(err), "a refused mint wrote files")
	})

	t.Run("jwt mint", func(t *testing.T) {
		const id = "spiffe://example.org/ctl/jwt"
		require.NotNil(t, spiffeBundle, "needs the bundle show --format spiffe subtest")
		token := strings.TrimSpace(ctlOK(t, srv, "jwt", "mint", "--spiffe-id", id, "--audience", "a"))
		svid, err := jwtsvid.ParseAndValidate(token, spiffeBundle, []string{"a"})
		require.NoError(t, err)
		require.Equal(t, id, svid.ID.String())
		require.Equal(t, []string{"a"}, svid.Audience)

		_, err = jwtsvid.ParseAndValidate(token, spiffeBundle, []string{"b"})
		require.Error(t, err, "a token for audience a validated for b")
		_, err = jwtsvid.ParseAndValidate(token, harness.StartServer(t).Bundle(t), []string{"a"})
		require.Error(t, err, "a token validated against another server's bundle")
	})
}

func TestCtlHealthcheck(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	bin := filepath.Join(harness.Binaries(t), "tallyctl")

	require.Contains(t, ctlOK(t, srv, "healthcheck"), "healthy")
	var h struct {
		Healthy bool `json:"healthy"`
	}
	ctlJSON(t, ctlOK(t, srv, "healthcheck", "-o", "json"), &h)
	require.True(t, h.Healthy)

	cases := []struct {
		name   string
		socket func(t *testing.T) string
	}{
		{"no such socket", func(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") }},
		{"socket of a stopped server", func(t *testing.T) string {
			stopped := harness.StartServer(t)
			stopped.Stop(t)
			return stopped.AdminSocket
		}},
		{"a file that is not a socket", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "plain")
			require.NoError(t, os.WriteFile(p, nil, 0o600))
			return p
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case has a socket of its own
			cmd := exec.Command(bin, "--socket", tc.socket(t), "--timeout", "10s", "healthcheck")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, "healthcheck succeeded: %s", stdout.String())
			require.NotZero(t, exit.ExitCode())
			require.Contains(t, stderr.String(), "unhealthy")
			require.NotContains(t, stdout.String(), "healthy")
		})
	}
}
