package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
)

// The attack: text fields with control characters make an entry read as
// something it is not. "unix:user:root\nunix:uid:0" prints as two selectors,
// a hint "web\nAdmin: true" as an extra field.
func TestAttackControlCharsInSelectors(t *testing.T) {
	sel := func(typ, value string) func(*store.Entry) {
		return func(e *store.Entry) { e.Selectors = []store.Selector{{Type: typ, Value: value}} }
	}
	second := func(typ, value string) func(*store.Entry) {
		return func(e *store.Entry) {
			e.Selectors = []store.Selector{{Type: "unix", Value: "uid:1"}, {Type: typ, Value: value}}
		}
	}
	cases := []struct {
		name   string
		mutate func(*store.Entry)
		errHas string
	}{
		// The four inputs of the report.
		{"newline makes two selectors", sel("unix", "user:root\nunix:uid:0"), "selectors[0].value: control character U+000A at byte 9"},
		{"NUL in a path", sel("unix", "path:/usr/bin/app\x00evil"), "selectors[0].value: control character U+0000 at byte 17"},
		{"newline in a k8s selector", sel("k8s", "ns:default\nsa:admin"), "selectors[0].value: control character U+000A at byte 10"},
		{"newline in the hint", func(e *store.Entry) { e.Hint = "web\nAdmin: true" }, "hint: control character U+000A at byte 3"},
		// The rest of the refused set, in every text field.
		{"index as given, before sorting", second("unix", "gid:1\r"), "selectors[1].value: control character U+000D at byte 5"},
		{"selector type", second("unix\t", "uid:2"), "selectors[1].type: control character U+0009 at byte 4"},
		{"DEL", sel("unix", "user:a\x7fb"), "selectors[0].value: control character U+007F at byte 6"},
		{"C1 NEL", sel("unix", "user:a\u0085b"), "selectors[0].value: control character U+0085 at byte 6"},
		{"C1 CSI", sel("k8s", "ns:\u009b31m"), "selectors[0].value: control character U+009B at byte 3"},
		{"line separator", sel("k8s", "sa:a\u2028b"), "selectors[0].value: line or paragraph separator U+2028 at byte 4"},
		{"right-to-left override", sel("unix", "path:/usr/bin/\u202egnp.exe"), "selectors[0].value: bidirectional control U+202E at byte 14"},
		{"bidi isolate", func(e *store.Entry) { e.Hint = "a\u2066b" }, "hint: bidirectional control U+2066 at byte 1"},
		{"invalid UTF-8", sel("unix", "user:\xff"), "selectors[0].value: invalid UTF-8 at byte 5"},
		{"dns name", func(e *store.Entry) { e.DNSNames = []string{"web.example.org", "a\nb.example.org"} }, "dns_names[1]: control character U+000A at byte 1"},
		{"spiffe id", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org/web\n" }, "spiffe_id: control character U+000A at byte 24"},
		{"parent id", func(e *store.Entry) { e.ParentID = agentA + "\u202e" }, "parent_id: bidirectional control U+202E"},
		// go-spiffe refuses what is not in its path alphabet, printable or not.
		{"spiffe id non-ASCII", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org/w\u00e9b" }, "spiffe_id"},
		{"spiffe id space", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org/a b" }, "spiffe_id"},
		{"spiffe id zero-width space", func(e *store.Entry) { e.SPIFFEID = "spiffe://example.org/a\u200bb" }, "spiffe_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, st := newRegistry(t, 0)
			ctx := context.Background()
			rev, err := st.Revision(ctx)
			require.NoError(t, err)

			bad := entry("bad", agentA, "unix:uid:1")
			c.mutate(&bad)
			_, err = r.CreateEntries(ctx, []store.Entry{entry("good", agentA, "unix:uid:7"), bad})
			require.ErrorIs(t, err, registry.ErrInvalid)
			require.ErrorContains(t, err, "entry 1: ")
			require.ErrorContains(t, err, c.errHas)
			require.True(t, utf8Printable(err.Error()), "the error is printable: %q", err.Error())

			// Nothing of the batch is stored.
			stored, err := st.ListEntries(ctx, store.EntryFilter{})
			require.NoError(t, err)
			require.Empty(t, stored)
			after, err := st.Revision(ctx)
			require.NoError(t, err)
			require.Equal(t, rev, after)

			// Nor may an update bring the text in.
			orig := create(t, r, entry("web", agentA, "unix:uid:1"))[0]
			upd := orig
			upd.Selectors = slices.Clone(orig.Selectors)
			c.mutate(&upd)
			_, err = r.UpdateEntry(ctx, upd, false)
			require.ErrorIs(t, err, registry.ErrInvalid)
			require.ErrorContains(t, err, c.errHas)
			got, err := st.GetEntry(ctx, orig.ID)
			require.NoError(t, err)
			require.Equal(t, orig, got)
		})
	}
}

func TestAttackControlCharsAllowedText(t *testing.T) {
	// Printable Unicode, including U+FFFD itself, is kept: only the refused
	// set is.
	for _, s := range []string{"", "web", "caf\u00e9", "\u65e5\u672c", "\U0001F600", "\ufffd", "a b", `"quoted"`} {
		require.NoError(t, registry.CheckText("hint", s), "%q", s)
	}
	e := entry("web", agentA, "unix:path:/opt/caf\u00e9/app", "k8s:pod-label:app:\u65e5\u672c")
	e.Hint = "caf\u00e9 \U0001F600"
	require.NoError(t, registry.ValidateEntry(td, registry.Limits{}, &e))
}

func TestAttackControlCharsListFilter(t *testing.T) {
	r, _ := newRegistry(t, 0)
	_, err := r.ListEntries(context.Background(), store.EntryFilter{Selectors: []store.Selector{{Type: "unix", Value: "user:root\nunix:uid:0"}}})
	require.ErrorIs(t, err, registry.ErrInvalid)
	require.ErrorContains(t, err, "selector.value: control character U+000A at byte 9")
	_, err = registry.ParseSelector("unix:user:a\u202eb")
	require.ErrorContains(t, err, "selector.value: bidirectional control U+202E at byte 6")
}

// Entries written before the check (or by anything that bypasses the
// registry) are reported at start and not served.
func TestAttackStoredControlCharsNotServed(t *testing.T) {
	ctx := context.Background()
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	direct := func(id, spiffeID, parent string, sel ...store.Selector) store.Entry {
		return store.Entry{ID: id, SPIFFEID: "spiffe://example.org/" + spiffeID, ParentID: parent, Selectors: sel}
	}
	uid := func(n int) store.Selector { return store.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(n)} }
	good := direct("good", "web", agentA, uid(1))
	goodChild := direct("good-child", "web/child", "spiffe://example.org/web", uid(2))
	badHint := direct("bad-hint", "hinted", agentA, uid(3))
	badHint.Hint, badHint.Admin = "web\nAdmin: true", true
	badMid := direct("bad-mid", "mid", agentA, uid(4))
	badMid.DNSNames = []string{"mid\u202e.example.org"}
	// Bad text, bad parents, bad IDs: what is reported and what it says.
	bad := map[string]struct {
		e    store.Entry
		text string
	}{
		"bad-root":          {direct("bad-root", "root", agentA, store.Selector{Type: "unix", Value: "user:root\nunix:uid:0"}), "user:root\nunix:uid:0"},
		"bad-path":          {direct("bad-path", "app", agentA, store.Selector{Type: "unix", Value: "path:/usr/bin/app\x00evil"}), "path:/usr/bin/app\x00evil"},
		"bad-k8s":           {direct("bad-k8s", "k8s", agentA, store.Selector{Type: "k8s", Value: "ns:default\nsa:admin"}), "ns:default\nsa:admin"},
		"bad-hint":          {badHint, "web\nAdmin: true"},
		"bad-mid":           {badMid, "mid\u202e.example.org"},
		"bad-\x1b[31mid":    {direct("bad-\x1b[31mid", "esc", agentA, uid(5)), "bad-\x1b[31mid"},
		"bad-\u0085c1-text": {direct("bad-\u0085c1-text", "c1", "spiffe://example.org/x\u009b", uid(6)), "bad-\u0085c1-text"},
	}
	all := []store.Entry{good, goodChild, direct("bad-mid-child", "mid/child", "spiffe://example.org/mid", uid(7))}
	for _, id := range slices.Sorted(maps.Keys(bad)) {
		all = append(all, bad[id].e)
	}
	_, err = st.CreateEntries(ctx, all)
	require.NoError(t, err, "the store takes what it is given")

	var logs bytes.Buffer
	r := registry.New(registry.Config{TrustDomain: td, Store: st, Logger: jsonLogger(&logs)})
	require.NoError(t, r.Load(ctx))

	sc := registry.Scope{AgentID: agentA}
	snap := r.Changes(sc, 0)
	require.Equal(t, []string{"spiffe://example.org/web", "spiffe://example.org/web/child"}, ids(snap.Upserts),
		"only the clean entries; the child of a refused entry is not reachable")
	require.Equal(t, 3, r.Count(), "the orphaned child is held, just not reachable")
	for id := range bad {
		_, err := r.Authorized(sc, id)
		require.ErrorIs(t, err, store.ErrNotFound, "%q is not minted for", id)
	}
	_, err = r.Authorized(sc, "bad-mid-child")
	require.ErrorIs(t, err, registry.ErrNotAuthorized)
	require.False(t, r.IsAdmin(badHint.SPIFFEID), "a refused admin entry grants nothing")

	// One warning per refused entry, naming it, the bad text escaped.
	warned := map[string]map[string]any{}
	for _, line := range warnings(t, &logs) {
		warned[line["entry_id"].(string)] = line
	}
	require.Len(t, warned, len(bad))
	for id, b := range bad {
		line := warned[quoteIfNeeded(id)]
		require.NotNil(t, line, "warning for %q in:\n%s", id, logs.String())
		require.Equal(t, strconv.Quote(b.text), line["text"], "%q", id)
		require.NotEmpty(t, line["field"])
		require.Contains(t, line["error"], line["field"])
	}
	require.True(t, utf8Printable(logs.String()), "the log is printable:\n%s", logs.String())

	// Another replica writes bad text into a served entry that has a child:
	// for agents that is the entry's deletion, and its child goes with it.
	logs.Reset()
	agent := apply(nil, snap)
	changed := good
	changed.Hint = "\u2066admin\u2069"
	_, err = st.UpdateEntry(ctx, changed)
	require.NoError(t, err)
	require.NoError(t, r.CatchUp(ctx))
	d := r.Changes(sc, snap.Revision)
	agent = apply(agent, d)
	require.Empty(t, agent, "delta %+v", d)
	require.Empty(t, r.Changes(sc, 0).Upserts)
	require.Len(t, warnings(t, &logs), 1)

	// Fixing the text (a new update) serves the entry again.
	fixed := badHint
	fixed.Hint = "web"
	_, err = st.UpdateEntry(ctx, fixed)
	require.NoError(t, err)
	require.NoError(t, r.CatchUp(ctx))
	require.Equal(t, []string{badHint.SPIFFEID}, ids(r.Changes(sc, 0).Upserts))
	require.True(t, r.IsAdmin(badHint.SPIFFEID))

	// A reload (as after compaction) reports and skips the same way.
	logs.Reset()
	require.NoError(t, r.Load(ctx))
	require.Equal(t, []string{badHint.SPIFFEID}, ids(r.Changes(sc, 0).Upserts))
	require.Len(t, warnings(t, &logs), len(bad)) // bad-hint fixed, good broken
}

func jsonLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

// apply applies a delta to an agent's set of entry IDs → SPIFFE IDs.
func apply(set map[string]string, d registry.Delta) map[string]string {
	if d.Reset || set == nil {
		set = map[string]string{}
	}
	for _, e := range d.Upserts {
		set[e.ID] = e.SPIFFEID
	}
	for _, id := range d.Deleted {
		delete(set, id)
	}
	return set
}

func warnings(t *testing.T, logs *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		if m["level"] == "WARN" {
			out = append(out, m)
		}
	}
	return out
}

// quoteIfNeeded is what the registry logs for text: as is when printable,
// else strconv.Quote'd.
func quoteIfNeeded(s string) string {
	if utf8Printable(s) && !strings.HasPrefix(s, `"`) {
		return s
	}
	return strconv.Quote(s)
}

// utf8Printable: every rune printable or a newline, no bidi controls (which
// strconv.IsPrint already reports as not printable).
func utf8Printable(s string) bool {
	for _, r := range s {
		if r != '\n' && (r == '\ufffd' || !strconv.IsPrint(r)) {
			return false
		}
	}
	return true
}

// Every text field of an entry is checked, under its JSON name: a text field
// added to store.Entry later fails here until checkEntryText covers it.
func TestAttackControlCharsEveryTextField(t *testing.T) {
	typ := reflect.TypeFor[store.Entry]()
	tested := 0
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		var cases []struct {
			field string
			set   func(v reflect.Value)
		}
		add := func(field string, set func(v reflect.Value)) {
			cases = append(cases, struct {
				field string
				set   func(v reflect.Value)
			}{field, set})
		}
		switch {
		case f.Type.Kind() == reflect.String:
			add(name, func(v reflect.Value) { v.SetString("x\n") })
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
			add(name+"[0]", func(v reflect.Value) { v.Set(reflect.ValueOf([]string{"x\n"}).Convert(f.Type)) })
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			elem := f.Type.Elem()
			for j := range elem.NumField() {
				if elem.Field(j).Type.Kind() != reflect.String {
					continue
				}
				inner, _, _ := strings.Cut(elem.Field(j).Tag.Get("json"), ",")
				add(name+"[0]."+inner, func(v reflect.Value) {
					s := reflect.MakeSlice(f.Type, 1, 1)
					s.Index(0).Field(j).SetString("x\n")
					v.Set(s)
				})
			}
		}
		for _, c := range cases {
			t.Run(c.field, func(t *testing.T) {
				e := entry("web", agentA, "unix:uid:1")
				c.set(reflect.ValueOf(&e).Elem().Field(i))
				err := registry.ValidateEntry(td, registry.Limits{}, &e)
				require.ErrorIs(t, err, registry.ErrInvalid)
				require.ErrorContains(t, err, c.field+": control character U+000A at byte 1")
			})
			tested++
		}
	}
	require.GreaterOrEqual(t, tested, 7, "id, spiffe_id, parent_id, selectors type and value, dns_names, hint")
}
