package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/test/internal/harness"
)

// attackInputs are the inputs of the report: text with control characters
// that makes an entry read as something it is not, each with the field the
// refusal must name.
var attackInputs = []struct {
	name   string
	mutate func(*tallyv1.Entry)
	field  string
}{
	{"newline makes two selectors", attackSelector("unix", "user:root\nunix:uid:0"), "selectors[0].value: control character U+000A at byte 9"},
	{"NUL in a path", attackSelector("unix", "path:/usr/bin/app\x00evil"), "selectors[0].value: control character U+0000 at byte 17"},
	{"newline in a k8s selector", attackSelector("k8s", "ns:default\nsa:admin"), "selectors[0].value: control character U+000A at byte 10"},
	{"newline in the hint", func(e *tallyv1.Entry) { e.Hint = "web\nAdmin: true" }, "hint: control character U+000A at byte 3"},
}

func attackSelector(typ, value string) func(*tallyv1.Entry) {
	return func(e *tallyv1.Entry) { e.Selectors = []*tallyv1.Selector{{Type: typ, Value: value}} }
}

func TestAttackControlCharsInSelectors(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	admin := srv.Admin(t)
	ctx := context.Background()

	const legitID = "spiffe://example.org/attack/web"
	legit := admEntry(legitID, "unix:user:root", "unix:path:/usr/bin/app")
	legit.Hint = "web"
	created, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{legit}})
	require.NoError(t, err)
	stored := created.GetEntries()[0]
	mark := admMarkStore(t, admin)

	for i, in := range attackInputs {
		t.Run(in.name, func(t *testing.T) {
			// A clean entry first: the batch is all or nothing.
			bad := admEntry(fmt.Sprintf("spiffe://example.org/attack/bad%d", i))
			in.mutate(bad)
			_, err := admin.BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
				admEntry(fmt.Sprintf("spiffe://example.org/attack/clean%d", i), "unix:uid:4243"), bad,
			}})
			admRequireStatus(t, err, codes.InvalidArgument, "entry 1: ", in.field)

			upd := proto.Clone(stored).(*tallyv1.Entry)
			in.mutate(upd)
			_, err = admin.UpdateEntry(ctx, &tallyv1.UpdateEntryRequest{Entry: upd})
			admRequireStatus(t, err, codes.InvalidArgument, in.field)
		})
	}
	t.Run("join token alias", func(t *testing.T) {
		_, err := admin.CreateJoinToken(ctx, &tallyv1.CreateJoinTokenRequest{SpiffeId: "spiffe://example.org/nodes/a\nb"})
		admRequireStatus(t, err, codes.InvalidArgument, "spiffe_id: control character U+000A at byte 28")
		_, err = admin.CreateJoinToken(ctx, &tallyv1.CreateJoinTokenRequest{SpiffeId: "spiffe://example.org/nodes/\u202eb"})
		admRequireStatus(t, err, codes.InvalidArgument, "spiffe_id: bidirectional control U+202E at byte 27")
	})
	admRequireUnchanged(t, admin, mark)

	// The legit entry prints as it always did: text unchanged, no quoting.
	text := ctlOK(t, srv, "entry", "list", "--spiffe-id", legitID)
	require.Equal(t, fmt.Sprintf(`Found 1 entry

Entry ID:       %s
SPIFFE ID:      spiffe://example.org/attack/web
Parent ID:      spiffe://example.org/agent/node1
Selectors:      unix:path:/usr/bin/app
                unix:user:root
X509-SVID TTL:  default
JWT-SVID TTL:   default
Hint:           web
Admin:          false
Revision:       %d
Created:        %s
`, stored.GetId(), stored.GetRevision(), time.Unix(stored.GetCreatedAt(), 0).UTC().Format(time.RFC3339)), text)
	listed := ctlEntries(t, ctlOK(t, srv, "entry", "list", "-o", "json"))
	for _, e := range listed {
		require.NotContains(t, e.SPIFFEID, "/attack/bad")
		require.NotContains(t, e.SPIFFEID, "/attack/clean")
	}
}

// A store holding such entries from before the check (or written around
// the registry) is reported at start, and those entries are not served.
func TestAttackStoredControlCharsNotServed(t *testing.T) {
	t.Parallel()
	srv := harness.StartServer(t)
	ctx := context.Background()
	agent, err := srv.AttestJoinToken(t, srv.NewToken(t, ""))
	require.NoError(t, err)
	created, err := srv.Admin(t).BatchCreateEntries(ctx, &tallyv1.BatchCreateEntriesRequest{Entries: []*tallyv1.Entry{
		newEntry("spiffe://example.org/attack/good", agent.ID.String(), "uid:1"),
	}})
	require.NoError(t, err)
	good := created.GetEntries()[0].GetId()
	srv.Stop(t)

	// Write the four inputs straight into the server's badger store.
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(srv.Dir, "data", "store")})
	require.NoError(t, err)
	bad := map[string]string{} // entry ID → its refused text as the log escapes it
	var entries []store.Entry
	for i, in := range attackInputs {
		p := newEntry(fmt.Sprintf("spiffe://example.org/attack/bad%d", i), agent.ID.String(), "uid:1000")
		in.mutate(p)
		e := store.Entry{ID: fmt.Sprintf("bad-%d", i), SPIFFEID: p.GetSpiffeId(), ParentID: p.GetParentId(), Hint: p.GetHint(), Admin: true}
		for _, s := range p.GetSelectors() {
			e.Selectors = append(e.Selectors, store.Selector{Type: s.GetType(), Value: s.GetValue()})
		}
		entries = append(entries, e)
		text := p.GetHint()
		if text == "" {
			text = p.GetSelectors()[0].GetValue()
		}
		bad[e.ID] = strings.NewReplacer("\n", `\\n`, "\x00", `\\x00`).Replace(text)
	}
	_, err = st.CreateEntries(ctx, entries)
	require.NoError(t, err)
	require.NoError(t, st.Close())

	srv.Start(t)
	log := srv.Log()
	for id, text := range bad {
		require.Contains(t, log, `"entry_id":"`+id+`"`, "a warning names %s:\n%s", id, log)
		require.Contains(t, log, text)
	}
	require.NotContains(t, log, "\nunix:uid:0", "the log holds the text escaped, never raw")

	// The agent gets the clean entry only, and nothing is minted for the rest.
	stream, err := agent.Node.SyncEntries(ctx, &tallyv1.SyncEntriesRequest{})
	require.NoError(t, err)
	sync := &syncState{entries: map[string]*tallyv1.Entry{}}
	sync.recvComplete(t, stream)
	require.Equal(t, []string{good}, keys(sync.entries))
	key := harness.NewKey(t)
	for i, e := range entries {
		resp, err := agent.Node.BatchNewX509SVID(ctx, &tallyv1.BatchNewX509SVIDRequest{Requests: []*tallyv1.X509SVIDRequest{{
			EntryId: e.ID, Csr: harness.CSR(t, key, []string{e.SPIFFEID}, nil),
		}}})
		require.NoError(t, err)
		require.Contains(t, resp.GetResults()[0].GetError(), "not found", "input %d", i)
		require.Empty(t, resp.GetResults()[0].GetCertChain())
	}

	// The operator still sees them, escaped, to fix or delete.
	text := ctlOK(t, srv, "entry", "show", "bad-0")
	require.Contains(t, text, "Selectors:      \"unix:user:root\\nunix:uid:0\"\n")
	require.NotContains(t, text, "\nunix:uid:0")
	text = ctlOK(t, srv, "entry", "show", "bad-3")
	require.Contains(t, text, "Hint:           \"web\\nAdmin: true\"\n")
	require.Contains(t, text, "Admin:          true\n") // the real field, once
	require.Equal(t, 1, strings.Count(text, "\nAdmin:"), "no line but the real one starts with Admin:")
	ctlOK(t, srv, "entry", "delete", "bad-0", "bad-1", "bad-2", "bad-3")
}
