package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

func TestEntryCreateFromFlags(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "entry", "create",
		"--spiffe-id", "spiffe://example.org/web",
		"--parent-id", "spiffe://example.org/agent",
		"--selector", "unix:uid:0", "--selector", "k8s:pod-label:app:a,b",
		"--x509-ttl", "90s", "--jwt-ttl", "5m",
		"--dns", "web.example.org", "--dns", "web",
		"--hint", "web", "--admin")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := srv.requests("BatchCreateEntries")
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

	// The server stored it, selectors sorted, with an ID, revision and
	// creation time of its own.
	stored := srv.storedEntries(t)
	require.Len(t, stored, 1)
	id := stored[0].Id
	require.NotEmpty(t, id)
	requireProto(t, &tallyv1.Entry{
		Id:             id,
		SpiffeId:       "spiffe://example.org/web",
		ParentId:       "spiffe://example.org/agent",
		Selectors:      []*tallyv1.Selector{{Type: "k8s", Value: "pod-label:app:a,b"}, {Type: "unix", Value: "uid:0"}},
		X509TtlSeconds: 90,
		JwtTtlSeconds:  300,
		DnsNames:       []string{"web.example.org", "web"},
		Hint:           "web",
		Admin:          true,
		Revision:       1,
		CreatedAt:      testNow.Unix(),
	}, stored[0])
	require.True(t, srv.registry.IsAdmin("spiffe://example.org/web"), "the registry serves it")

	require.Contains(t, res.stdout, "Entry ID:       "+id+"\n")
	require.Contains(t, res.stdout, "X509-SVID TTL:  1m30s\n")
	require.Contains(t, res.stdout, "Selectors:      k8s:pod-label:app:a,b\n                unix:uid:0\n")
}

func TestEntryCreateJSONOutput(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "-o", "json", "entry", "create",
		"--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/agent", "--selector", "unix:uid:0")
	require.Equal(t, 0, res.code, res.stderr)

	stored := srv.storedEntries(t)
	require.Len(t, stored, 1)
	var out entriesJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Equal(t, entriesJSON{Entries: []entryJSON{{
		ID:        stored[0].Id,
		SPIFFEID:  "spiffe://example.org/web",
		ParentID:  "spiffe://example.org/agent",
		Selectors: []selectorJSON{{Type: "unix", Value: "uid:0"}},
		DNSNames:  []string{},
		Revision:  1,
		CreatedAt: "2023-11-14T22:13:20Z",
	}}}, out)

	// entry list shows the created entry just as entry create did.
	list := runCLI(t, socket, "", "-o", "json", "entry", "list")
	require.Equal(t, 0, list.code, list.stderr)
	require.JSONEq(t, res.stdout, list.stdout)
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
	// requireStored checks that the server stored the entries of want, and
	// returns their IDs in want's order.
	requireStored := func(t *testing.T, srv *adminServer) []string {
		t.Helper()
		stored := srv.storedEntries(t)
		require.Len(t, stored, len(want.Entries))
		var ids []string
		for _, w := range want.Entries {
			i := slices.IndexFunc(stored, func(e *tallyv1.Entry) bool { return e.SpiffeId == w.SpiffeId })
			require.GreaterOrEqual(t, i, 0, "%s stored", w.SpiffeId)
			got := proto.Clone(stored[i]).(*tallyv1.Entry)
			ids = append(ids, got.Id)
			require.NotEmpty(t, got.Id)
			require.Equal(t, testNow.Unix(), got.CreatedAt)
			got.Id, got.Revision, got.CreatedAt = "", 0, 0
			requireProto(t, w, got)
		}
		return ids
	}

	t.Run("file", func(t *testing.T) {
		srv, socket := startAdmin(t)
		path := filepath.Join(t.TempDir(), "entries.json")
		require.NoError(t, os.WriteFile(path, []byte(data), 0o600))

		res := runCLI(t, socket, "", "entry", "create", "--data", path)
		require.Equal(t, 0, res.code, res.stderr)
		reqs := srv.requests("BatchCreateEntries")
		require.Len(t, reqs, 1)
		requireProto(t, want, reqs[0])
		for _, id := range requireStored(t, srv) {
			require.Contains(t, res.stdout, "Entry ID:       "+id+"\n")
		}
	})
	t.Run("stdin", func(t *testing.T) {
		srv, socket := startAdmin(t)

		res := runCLI(t, socket, data, "entry", "create", "--data", "-")
		require.Equal(t, 0, res.code, res.stderr)
		reqs := srv.requests("BatchCreateEntries")
		require.Len(t, reqs, 1)
		requireProto(t, want, reqs[0])
		requireStored(t, srv)
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
			srv, socket := startAdmin(t)
			res := runCLI(t, socket, tt.stdin, append([]string{"entry", "create"}, tt.args...)...)
			require.Equal(t, 1, res.code)
			require.Contains(t, res.stderr, tt.wantErr)
			require.Empty(t, res.stdout)
			require.Zero(t, srv.callCount())
		})
	}
}

func TestEntryCreateServerError(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "entry", "create",
		"--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/agent", "--selector", "nope:x")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: create entries: entry 0: registry: invalid: selector \"nope:x\": unknown type \"nope\" (known: k8s, k8s_psat, unix) (InvalidArgument)\n", res.stderr)
	require.Empty(t, res.stdout)
	require.Len(t, srv.requests("BatchCreateEntries"), 1, "refused by the server, not by tallyctl")
	require.Empty(t, srv.storedEntries(t))

	// A batch is created whole or not at all.
	res = runCLI(t, socket, `{"entries": [
		{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p", "selectors": [{"type": "unix", "value": "uid:1"}]},
		{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/p", "selectors": [{"type": "unix", "value": "uid:1"}]}
	]}`, "entry", "create", "--data", "-")
	require.Equal(t, 1, res.code)
	require.Empty(t, res.stdout)
	require.Regexp(t, `^Error: create entries: badgerstore: create entries: entry "[^"]+" equals entry "[^"]+" of the batch: store: already exists \(AlreadyExists\)\n$`, res.stderr)
	require.Empty(t, srv.storedEntries(t))
}

// TestEntryListOutputRecreates checks that `entry list -o json` output of one
// server can be given back to `entry create --data`, here of another server.
func TestEntryListOutputRecreates(t *testing.T) {
	from, fromSocket := startAdmin(t)
	src := from.addEntry(t, testEntry())

	list := runCLI(t, fromSocket, "", "-o", "json", "entry", "list")
	require.Equal(t, 0, list.code, list.stderr)

	to, toSocket := startAdmin(t)
	res := runCLI(t, toSocket, list.stdout, "entry", "create", "--data", "-")
	require.Equal(t, 0, res.code, res.stderr)

	// The request is the entry as the first server stored it, less what
	// only a server sets.
	want := proto.Clone(src).(*tallyv1.Entry)
	want.Id, want.Revision, want.CreatedAt = "", 0, 0
	reqs := to.requests("BatchCreateEntries")
	require.Len(t, reqs, 1)
	requireProto(t, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{want}}, reqs[0])

	stored := to.storedEntries(t)
	require.Len(t, stored, 1)
	require.NotEqual(t, src.Id, stored[0].Id, "the new server gave it its own ID")
	got := proto.Clone(stored[0]).(*tallyv1.Entry)
	got.Id = src.Id
	requireProto(t, src, got)
}

func TestEntryShow(t *testing.T) {
	srv, socket := startAdmin(t)
	e := srv.addEntry(t, testEntry())

	res := runCLI(t, socket, "", "entry", "show", e.Id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.GetEntryRequest{Id: e.Id}, srv.requests("GetEntry")[0])
	require.Contains(t, res.stdout, "Entry ID:       "+e.Id+"\n")
	require.Contains(t, res.stdout, "SPIFFE ID:      spiffe://example.org/web\n")
	require.Contains(t, res.stdout, "Selectors:      unix:gid:0\n                unix:uid:0\n")
	require.Contains(t, res.stdout, "Revision:       1\n")

	res = runCLI(t, socket, "", "entry", "show", "missing")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: get entry \"missing\": badgerstore: entry \"missing\": store: not found (NotFound)\n", res.stderr)
}

// TestEntryListPages lists more entries than the server puts in one page
// (10,000, ca/api maxPageSize), through a filter that leaves some out.
func TestEntryListPages(t *testing.T) {
	const n = 10_001
	srv, socket := startAdmin(t)
	agent := "spiffe://example.org/agent"
	uid0, gid0 := &tallyv1.Selector{Type: "unix", Value: "uid:0"}, &tallyv1.Selector{Type: "unix", Value: "gid:0"}
	var seed []*tallyv1.Entry
	for i := range n {
		seed = append(seed, &tallyv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/w/%d", i), ParentId: agent, Selectors: []*tallyv1.Selector{uid0, gid0}})
	}
	seed = append(seed,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/uid-only", ParentId: agent, Selectors: []*tallyv1.Selector{uid0}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/other-parent", ParentId: "spiffe://example.org/other", Selectors: []*tallyv1.Selector{uid0, gid0}},
	)
	var wantIDs []string
	for _, e := range srv.addEntries(t, seed...)[:n] {
		wantIDs = append(wantIDs, e.Id)
	}
	slices.Sort(wantIDs)

	res := runCLI(t, socket, "", "-o", "json", "entry", "list",
		"--parent-id", "spiffe://example.org/agent", "--selector", "unix:uid:0", "--selector", "unix:gid:0")
	require.Equal(t, 0, res.code, res.stderr)

	reqs := srv.requests("ListEntries")
	require.Len(t, reqs, 2)
	for i, token := range []string{"", wantIDs[n-2]} {
		requireProto(t, &tallyv1.ListEntriesRequest{
			ByParentId:  "spiffe://example.org/agent",
			BySelectors: []*tallyv1.Selector{uid0, gid0},
			PageToken:   token,
		}, reqs[i])
	}
	var out entriesJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	var ids []string
	for _, e := range out.Entries {
		ids = append(ids, e.ID)
	}
	require.Equal(t, wantIDs, ids)

	res = runCLI(t, socket, "", "entry", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.True(t, strings.HasPrefix(res.stdout, "Found 10003 entries\n\nEntry ID:"), res.stdout[:min(len(res.stdout), 200)])
	require.Contains(t, res.stdout, "Entry ID:       "+wantIDs[n-1]+"\n")
	require.Contains(t, res.stdout, "SPIFFE ID:      spiffe://example.org/other-parent\n")
	require.Len(t, srv.requests("ListEntries"), 4)
}

func TestEntryListEmpty(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "-o", "json", "entry", "list")
	require.Equal(t, 0, res.code, res.stderr)
	require.JSONEq(t, `{"entries": []}`, res.stdout)

	srv.addEntry(t, testEntry())
	res = runCLI(t, socket, "", "entry", "list", "--spiffe-id", "spiffe://example.org/none")
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "Found 0 entries\n", res.stdout)
	requireProto(t, &tallyv1.ListEntriesRequest{BySpiffeId: "spiffe://example.org/none"}, srv.requests("ListEntries")[1])

	res = runCLI(t, socket, "", "entry", "list", "--spiffe-id", "spiffe://example.org/web")
	require.Equal(t, 0, res.code, res.stderr)
	require.True(t, strings.HasPrefix(res.stdout, "Found 1 entry\n\n"), res.stdout)
}

func TestEntryUpdate(t *testing.T) {
	srv, socket := startAdmin(t)
	e := srv.addEntry(t, testEntry())

	res := runCLI(t, socket, "", "entry", "update", e.Id, "--x509-ttl", "2h", "--dns", "", "--admin", "--hint", "")
	require.Equal(t, 0, res.code, res.stderr)

	// Only the fields given change; the rest is sent back as fetched.
	want := proto.Clone(e).(*tallyv1.Entry)
	want.X509TtlSeconds = 7200
	want.DnsNames = nil
	want.Admin = true
	want.Hint = ""
	reqs := srv.requests("UpdateEntry")
	require.Len(t, reqs, 1)
	requireProto(t, &tallyv1.UpdateEntryRequest{Entry: want}, reqs[0])
	require.Contains(t, res.stdout, "X509-SVID TTL:  2h\n")
	require.Contains(t, res.stdout, "Revision:       2\n")
	stored := srv.storedEntries(t)
	require.Len(t, stored, 1)
	wantStored := proto.Clone(want).(*tallyv1.Entry)
	wantStored.Revision = 2
	requireProto(t, wantStored, stored[0])

	res = runCLI(t, socket, "", "entry", "update", e.Id, "--selector", "unix:uid:5", "--spiffe-id", "spiffe://example.org/web2")
	require.Equal(t, 0, res.code, res.stderr)
	reqs = srv.requests("UpdateEntry")
	require.Len(t, reqs, 2)
	want.Selectors = []*tallyv1.Selector{{Type: "unix", Value: "uid:5"}}
	want.SpiffeId = "spiffe://example.org/web2"
	want.Revision = 2
	requireProto(t, &tallyv1.UpdateEntryRequest{Entry: want}, reqs[1])
	stored = srv.storedEntries(t)
	require.Len(t, stored, 1)
	want.Revision = 3
	requireProto(t, want, stored[0])
}

func TestEntryUpdateErrors(t *testing.T) {
	srv, socket := startAdmin(t)

	res := runCLI(t, socket, "", "entry", "update", "entry-1")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "Error: nothing to update")
	require.Zero(t, srv.callCount())

	res = runCLI(t, socket, "", "entry", "update", "entry-1", "--selector", "bad")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, `Error: selector "bad": want type:value`)
	require.Zero(t, srv.callCount())

	res = runCLI(t, socket, "", "entry", "update", "entry-9", "--admin")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: get entry \"entry-9\": badgerstore: entry \"entry-9\": store: not found (NotFound)\n", res.stderr)
	require.Empty(t, srv.requests("UpdateEntry"))

	// The server validates the entry as updated.
	e := srv.addEntry(t, testEntry())
	res = runCLI(t, socket, "", "entry", "update", e.Id, "--x509-ttl", "5h")
	require.Equal(t, 1, res.code)
	require.Contains(t, res.stderr, "x509_ttl: 5h0m0s exceeds the maximum 4h0m0s (CA TTL / 6) (InvalidArgument)\n")
	require.Len(t, srv.requests("UpdateEntry"), 1)
	requireProto(t, e, srv.storedEntries(t)[0])
}

func TestEntryDelete(t *testing.T) {
	srv, socket := startAdmin(t)
	added := srv.addEntries(t,
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/a", ParentId: "spiffe://example.org/agent", Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:1"}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/b", ParentId: "spiffe://example.org/agent", Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:2"}}},
		&tallyv1.Entry{SpiffeId: "spiffe://example.org/c", ParentId: "spiffe://example.org/agent", Selectors: []*tallyv1.Selector{{Type: "unix", Value: "uid:3"}}},
	)
	a, b, c := added[0], added[1], added[2]

	res := runCLI(t, socket, "", "entry", "delete", a.Id, b.Id)
	require.Equal(t, 0, res.code, res.stderr)
	requireProto(t, &tallyv1.BatchDeleteEntriesRequest{Ids: []string{a.Id, b.Id}}, srv.requests("BatchDeleteEntries")[0])
	require.Equal(t, "Deleted entry "+a.Id+"\nDeleted entry "+b.Id+"\n", res.stdout)
	stored := srv.storedEntries(t)
	require.Len(t, stored, 1)
	require.Equal(t, c.Id, stored[0].Id)

	// All or none: c stays when a is gone already.
	res = runCLI(t, socket, "", "-o", "json", "entry", "delete", c.Id, a.Id)
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: delete entries: badgerstore: delete entries: entry \""+a.Id+"\": store: not found (NotFound)\n", res.stderr)
	require.Empty(t, res.stdout)
	require.Len(t, srv.storedEntries(t), 1)

	res = runCLI(t, socket, "", "entry", "delete")
	require.Equal(t, 1, res.code)
	require.Equal(t, "Error: want one or more entry IDs, got 0 argument(s)\nRun 'tallyctl entry delete --help' for usage.\n", res.stderr)
}
