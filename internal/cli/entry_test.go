package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestEntryCreateFromFlags(t *testing.T) {
	fake, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "entry", "create",
		"--spiffe-id", "spiffe://example.org/web",
		"--parent-id", "spiffe://example.org/agent",
		"--selector", "unix:uid:0", "--selector", "k8s:pod-label:app:a,b",
		"--x509-ttl", "90s", "--jwt-ttl", "5m",
		"--dns", "web.example.org", "--dns", "web",
		"--hint", "web", "--admin")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := fake.requests("BatchCreateEntries")
	require.Len(t, reqs, 1)
	requireProto(t, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{{
		SpiffeId:       "spiffe://example.org/web",
		ParentId:       "spiffe://example.org/agent",
		Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}, {Type: "k8s", Value: "pod-label:app:a,b"}},
		X509TtlSeconds: 90,
		JwtTtlSeconds:  300,
		DnsNames:       []string{"web.example.org", "web"},
		Hint:           "web",
		Admin:          true,
	}}}, reqs[0])
	require.Contains(t, res.stdout, "Entry ID:       entry-1\n")
	require.Contains(t, res.stdout, "X509-SVID TTL:  1m30s\n")
	require.Contains(t, res.stdout, "Selectors:      unix:uid:0\n                k8s:pod-label:app:a,b\n")
}

func TestEntryCreateJSONOutput(t *testing.T) {
	_, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "-o", "json", "entry", "create",
		"--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/agent", "--selector", "unix:uid:0")
	require.Equal(t, 0, res.code, res.stderr)

	var out entriesJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Equal(t, entriesJSON{Entries: []entryJSON{{
		ID:        "entry-1",
		SPIFFEID:  "spiffe://example.org/web",
		ParentID:  "spiffe://example.org/agent",
		Selectors: []selectorJSON{{Type: "unix", Value: "uid:0"}},
		DNSNames:  []string{},
		Revision:  1,
		CreatedAt: "2023-11-14T22:13:20Z",
	}}}, out)
}

func TestEntryCreateFromData(t *testing.T) {
	const data = `{"entries": [
		{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p",
		 "selectors": [{"type": "unix", "value": "uid:1"}], "x509_svid_ttl": 200, "jwt_svid_ttl": 30},
		{"spiffe_id": "spiffe://example.org/b", "parent_id": "spiffe://example.org/p",
		 "selectors": [{"type": "unix", "value": "uid:2"}], "x509_ttl": "2h", "dns_names": ["b"]}
	]}`
	want := &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
		{
			SpiffeId: "spiffe://example.org/a", ParentId: "spiffe://example.org/p",
			Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}},
			X509TtlSeconds: 200, JwtTtlSeconds: 30,
		},
		{
			SpiffeId: "spiffe://example.org/b", ParentId: "spiffe://example.org/p",
			Selectors:      []*tallyv1.Selector{{Type: "unix", Value: "uid:2"}},
			X509TtlSeconds: 7200, DnsNames: []string{"b"},
		},
	}}

	t.Run("file", func(t *testing.T) {
		fake, socket := startFakeAdmin(t)
		path := filepath.Join(t.TempDir(), "entries.json")
		require.NoError(t, os.WriteFile(path, []byte(data), 0o600))

		res := runCLI(t, socket, "", "entry", "create", "--data", path)
		require.Equal(t, 0, res.code, res.stderr)
		reqs := fake.requests("BatchCreateEntries")
		require.Len(t, reqs, 1)
		requireProto(t, want, reqs[0])
		require.Contains(t, res.stdout, "entry-1")
		require.Contains(t, res.stdout, "entry-2")
	})
	t.Run("stdin", func(t *testing.T) {
		fake, socket := startFakeAdmin(t)

		res := runCLI(t, socket, data, "entry", "create", "--data", "-")
		require.Equal(t, 0, res.code, res.stderr)
		reqs := fake.requests("BatchCreateEntries")
		require.Len(t, reqs, 1)
		requireProto(t, want, reqs[0])
	})
}

// TestEntryCreateBadInput checks that mistakes are reported before any call.
func TestEntryCreateBadInput(t *testing.T) {
	ids := []string{"--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/agent"}
	tests := []struct {
		name    string
		args    []string
		stdin   string
		wantErr string
	}{
		{name: "selector without value", args: append([]string{"--selector", "unix"}, ids...),
			wantErr: `Error: selector "unix": want type:value`},
		{name: "selector without type", args: append([]string{"--selector", ":uid:0"}, ids...),
			wantErr: `Error: selector ":uid:0": type is empty`},
		{name: "bad duration", args: append([]string{"--x509-ttl", "1x"}, ids...),
			wantErr: `Error: invalid argument "1x" for "--x509-ttl" flag`},
		{name: "negative duration", args: append([]string{"--jwt-ttl", "-5m"}, ids...),
			wantErr: `Error: --jwt-ttl -5m0s: must not be negative`},
		{name: "bad SPIFFE ID", args: []string{"--spiffe-id", "web", "--parent-id", "spiffe://example.org/agent"},
			wantErr: `Error: --spiffe-id "web": `},
		{name: "no parent", args: []string{"--spiffe-id", "spiffe://example.org/web"},
			wantErr: `Error: --parent-id is required (or --data)`},
		{name: "data and flags", args: []string{"--data", "-", "--hint", "x"},
			wantErr: `Error: --data cannot be combined with --hint`},
		{name: "data unknown field", args: []string{"--data", "-"}, stdin: `{"entries": [{"spiffe_id": "x", "ttl": 1}]}`,
			wantErr: `Error: --data stdin: entries[0]: json: unknown field "ttl"`},
		{name: "missing data file", args: []string{"--data", "/nonexistent/entries.json"},
			wantErr: `Error: read --data: open /nonexistent/entries.json: no such file or directory`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, socket := startFakeAdmin(t)
			res := runCLI(t, socket, tt.stdin, append([]string{"entry", "create"}, tt.args...)...)
			require.Equal(t, 1, res.code)
			require.Contains(t, res.stderr, tt.wantErr)
			require.Empty(t, res.stdout)
			require.Zero(t, fake.callCount())
		})
	}
}

func TestEntryCreateServerError(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	fake.failWith("BatchCreateEntries", status.Error(codes.InvalidArgument, `entries[0]: selector type "nope" is unknown`))

	res := runCLI(t, socket, "", "entry", "create",
		"--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/agent", "--selector", "nope:x")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: create entries: entries[0]: selector type \"nope\" is unknown (InvalidArgument)\n", res.stderr)
	require.Empty(t, res.stdout)
}

// TestEntryListOutputRecreates checks that `entry list -o json` output can be
// given back to `entry create --data`.
func TestEntryListOutputRecreates(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	src := testEntry()
	src.Id, src.Revision, src.CreatedAt = "", 0, 0
	fake.addEntry(src)

	list := runCLI(t, socket, "", "-o", "json", "entry", "list")
	require.Equal(t, 0, list.code, list.stderr)
	res := runCLI(t, socket, list.stdout, "entry", "create", "--data", "-")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := fake.requests("BatchCreateEntries")
	require.Len(t, reqs, 1)
	requireProto(t, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{src}}, reqs[0])
}

func TestEntryShow(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	e := fake.addEntry(testEntry())

	res := runCLI(t, socket, "", "entry", "show", e.Id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.GetEntryRequest{Id: e.Id}, fake.requests("GetEntry")[0])
	require.Contains(t, res.stdout, "SPIFFE ID:      spiffe://example.org/web\n")

	res = runCLI(t, socket, "", "entry", "show", "missing")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: get entry \"missing\": no entry \"missing\" (NotFound)\n", res.stderr)
}

func TestEntryListPages(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	for range 5 {
		fake.addEntry(&tallyv1.Entry{SpiffeId: "spiffe://example.org/w", ParentId: "spiffe://example.org/agent"})
	}

	res := runCLI(t, socket, "", "-o", "json", "entry", "list",
		"--parent-id", "spiffe://example.org/agent", "--selector", "unix:uid:0", "--selector", "unix:gid:0")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := fake.requests("ListEntries")
	require.Len(t, reqs, 3)
	for i, token := range []string{"", "2", "4"} {
		requireProto(t, &tallyv1.ListEntriesRequest{
			ByParentId:  "spiffe://example.org/agent",
			BySelectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:0"}, {Type: "unix", Value: "gid:0"}},
			PageToken:   token,
		}, reqs[i])
	}
	var out entriesJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	var ids []string
	for _, e := range out.Entries {
		ids = append(ids, e.ID)
	}
	require.Equal(t, []string{"entry-1", "entry-2", "entry-3", "entry-4", "entry-5"}, ids)

	res = runCLI(t, socket, "", "entry", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "Found 5 entries\n\nEntry ID:")
	require.Contains(t, res.stdout, "Entry ID:       entry-5\n")
}

func TestEntryListEmpty(t *testing.T) {
	_, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "entry", "list", "--spiffe-id", "spiffe://example.org/none")
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "Found 0 entries\n", res.stdout)

	res = runCLI(t, socket, "", "-o", "json", "entry", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.JSONEq(t, `{"entries": []}`, res.stdout)
}

func TestEntryUpdate(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	e := fake.addEntry(testEntry())

	res := runCLI(t, socket, "", "entry", "update", e.Id, "--x509-ttl", "2h", "--dns", "", "--admin", "--hint", "")
	require.Equal(t, 0, res.code, res.stderr)

	// Only the fields given change; the rest is sent back as fetched.
	want := proto.Clone(e).(*tallyv1.Entry)
	want.X509TtlSeconds = 7200
	want.DnsNames = nil
	want.Admin = true
	want.Hint = ""
	reqs := fake.requests("UpdateEntry")
	require.Len(t, reqs, 1)
	requireProto(t, &tallyv1.UpdateEntryRequest{Entry: want}, reqs[0])
	require.Contains(t, res.stdout, "X509-SVID TTL:  2h\n")
	require.Contains(t, res.stdout, "Revision:       2\n")

	res = runCLI(t, socket, "", "entry", "update", e.Id, "--selector", "unix:uid:5", "--spiffe-id", "spiffe://example.org/web2")
	require.Equal(t, 0, res.code, res.stderr)
	reqs = fake.requests("UpdateEntry")
	require.Len(t, reqs, 2)
	want.Selectors = []*tallyv1.Selector{{Type: "unix", Value: "uid:5"}}
	want.SpiffeId = "spiffe://example.org/web2"
	want.Revision = 2
	requireProto(t, &tallyv1.UpdateEntryRequest{Entry: want}, reqs[1])
}

func TestEntryUpdateErrors(t *testing.T) {
	fake, socket := startFakeAdmin(t)

	res := runCLI(t, socket, "", "entry", "update", "entry-1")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "Error: nothing to update")
	require.Zero(t, fake.callCount())

	res = runCLI(t, socket, "", "entry", "update", "entry-1", "--selector", "bad")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, `Error: selector "bad": want type:value`)
	require.Zero(t, fake.callCount())

	res = runCLI(t, socket, "", "entry", "update", "entry-9", "--admin")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: get entry \"entry-9\": no entry \"entry-9\" (NotFound)\n", res.stderr)
	require.Empty(t, fake.requests("UpdateEntry"))
}

func TestEntryDelete(t *testing.T) {
	fake, socket := startFakeAdmin(t)
	a := fake.addEntry(&tallyv1.Entry{SpiffeId: "spiffe://example.org/a"})
	b := fake.addEntry(&tallyv1.Entry{SpiffeId: "spiffe://example.org/b"})

	res := runCLI(t, socket, "", "entry", "delete", a.Id, b.Id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{a.Id, b.Id}}, fake.requests("BatchDeleteEntries")[0])
	require.Equal(t, "Deleted entry entry-1\nDeleted entry entry-2\n", res.stdout)

	res = runCLI(t, socket, "", "-o", "json", "entry", "delete", "entry-1")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: delete entries: no entry \"entry-1\" (NotFound)\n", res.stderr)

	res = runCLI(t, socket, "", "entry", "delete")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: want one or more entry IDs, got 0 argument(s)\nRun 'tallyctl entry delete --help' for usage.\n", res.stderr)
}
