package registrar_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tallyid/tally/ca/store"
)

// A template that fails for a pod, a spec that does not compile and a
// selector that matches nothing are status conditions and Events, not
// crashes; the pods of a good identity keep their entries.
func TestBadTemplates(t *testing.T) {
	e := newEnv(t)
	e.start("prod", nil)
	e.identity("good", map[string]any{"spiffeIDTemplate": nsSATemplate})
	e.identity("needs-label", map[string]any{"spiffeIDTemplate": "spiffe://example.org/app/{{ .PodMeta.Labels.app }}"})
	e.identity("outside", map[string]any{"spiffeIDTemplate": "spiffe://other.org/{{ .PodMeta.Name }}"})
	e.identity("reserved", map[string]any{"spiffeIDTemplate": "spiffe://example.org/tally/agent/x/{{ .PodMeta.Name }}"})
	e.identity("bad-dns", map[string]any{"spiffeIDTemplate": nsSATemplate + "/dns", "dnsNameTemplates": []any{"{{ .PodMeta.Name }}_x.svc"}})
	e.identity("broken", map[string]any{"spiffeIDTemplate": "spiffe://example.org/{{ .PodMeta.Name"})
	e.identity("nothing", map[string]any{"spiffeIDTemplate": nsSATemplate, "podSelector": map[string]any{"matchLabels": map[string]any{"test": "no-such-pods"}}})
	e.identity("federated", map[string]any{"spiffeIDTemplate": nsSATemplate, "federatesWith": []any{"other.org"}})
	e.pod("p", nil)

	got := e.eventually("prod", "the good identity's entry", func(m map[string]store.Entry) bool { _, ok := m["good "+e.ns+"/p"]; return ok })
	assert.Len(t, got, 1, "no other identity wrote an entry")

	s := e.status(identities, "needs-label", func(s map[string]any) bool { return count(s, "renderFailures") == 1 })
	st, reason, msg := condition(s, "Ready")
	assert.Equal(t, []string{"False", "RenderFailed"}, []string{st, reason})
	assert.Contains(t, msg, `map has no entry for key "app"`)
	for name, want := range map[string]string{"outside": `outside trust domain "example.org"`, "reserved": "reserved", "bad-dns": "not a DNS name"} {
		s = e.status(identities, name, func(s map[string]any) bool { return count(s, "renderFailures") == 1 })
		_, _, msg = condition(s, "Ready")
		assert.Contains(t, msg, want, name)
	}
	for name, want := range map[string]string{"broken": "spiffeIDTemplate", "federated": "federatesWith"} {
		s = e.status(identities, name, func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "False" })
		_, reason, msg = condition(s, "Ready")
		assert.Equal(t, "InvalidSpec", reason, name)
		assert.Contains(t, msg, want, name)
	}
	s = e.status(identities, "nothing", func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "True" })
	assert.EqualValues(t, 0, count(s, "podsSelected"))

	eventually(t, "the events", func() bool {
		return len(e.events("needs-label", "RenderFailed")) > 0 && len(e.events("broken", "InvalidSpec")) > 0
	})
	assert.Contains(t, e.events("needs-label", "RenderFailed")[0], "pod "+e.ns+"/p")

	// Fixing the template gives the pod its entry.
	e.identity("needs-label", map[string]any{"spiffeIDTemplate": "spiffe://example.org/app/{{ .PodMeta.Name }}"})
	e.eventually("prod", "the fixed identity's entry", func(m map[string]store.Entry) bool { return len(m) == 2 })
	e.status(identities, "needs-label", func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "True" })
}

// Two identities rendering the same entry for a pod: one entry, the other
// identity counts it masked. An equal entry made by hand masks too, and is
// never touched.
func TestMaskedEntries(t *testing.T) {
	e := newEnv(t)
	p := e.pod("p", nil)
	hand, err := e.reg.CreateEntries(t.Context(), []store.Entry{{SPIFFEID: "spiffe://example.org/by-hand", ParentID: agentOf(e),
		Selectors: []store.Selector{{Type: "k8s", Value: "ns:" + e.ns}, {Type: "k8s", Value: "pod-uid:" + string(p.UID)}}}})
	require.NoError(t, err)
	e.start("prod", nil)
	e.identity("a", map[string]any{"spiffeIDTemplate": nsSATemplate})
	e.identity("b", map[string]any{"spiffeIDTemplate": nsSATemplate})
	e.identity("c", map[string]any{"spiffeIDTemplate": "spiffe://example.org/by-hand"})

	got := e.eventually("prod", "a's entry", func(m map[string]store.Entry) bool { return len(m) == 1 })
	assert.Contains(t, got, "a "+e.ns+"/p")
	for _, name := range []string{"b", "c"} {
		s := e.status(identities, name, func(s map[string]any) bool { return count(s, "entriesMasked") == 1 })
		st, reason, _ := condition(s, "Masked")
		assert.Equal(t, []string{"True", "EntriesMasked"}, []string{st, reason}, name)
	}
	still, err := e.reg.GetEntry(t.Context(), hand[0].ID)
	require.NoError(t, err)
	assert.Equal(t, hand[0], still, "a hand-made entry is never changed")

	// a goes: b's entry takes its place.
	e.delete(identities, "a")
	e.eventually("prod", "b's entry", func(m map[string]store.Entry) bool { _, ok := m["b "+e.ns+"/p"]; return ok && len(m) == 1 })
}

// Two clusters on one server each keep their own entries: a registrar
// starting for one never deletes the other's, nor entries made by hand.
func TestClustersShareAServer(t *testing.T) {
	e := newEnv(t)
	e.identity("web", map[string]any{"spiffeIDTemplate": nsSATemplate})
	e.pod("p", nil)
	hand, err := e.reg.CreateEntries(t.Context(), []store.Entry{{SPIFFEID: "spiffe://example.org/hand", ParentID: agentOf(e),
		Selectors: []store.Selector{{Type: "unix", Value: "uid:0"}}}})
	require.NoError(t, err)
	e.start("prod", nil)
	prod := e.eventually("prod", "prod's entry", func(m map[string]store.Entry) bool { return len(m) == 1 })

	// A second cluster's registrar on the same server: it keeps its own
	// (its agents have other IDs), and leaves prod's alone.
	e.start("staging", nil)
	staging := e.eventually("staging", "staging's entry", func(m map[string]store.Entry) bool { return len(m) == 1 })
	for k := range staging {
		assert.Contains(t, staging[k].ParentID, "/k8s_psat/staging/")
	}
	time.Sleep(300 * time.Millisecond) // a registrar that deleted others' entries would have by now
	assert.Equal(t, prod, e.owned("prod"))
	_, err = e.reg.GetEntry(t.Context(), hand[0].ID)
	require.NoError(t, err, "an entry made by hand stays")
}

// A registrar that was down while a pod went and a resource changed
// catches up when it starts: nothing lost, nothing left behind.
func TestRestartCatchesUp(t *testing.T) {
	e := newEnv(t)
	e.identity("web", map[string]any{"spiffeIDTemplate": nsSATemplate})
	gone := e.pod("gone", nil)
	e.pod("stays", nil)
	_, stop := e.stoppable("prod", nil)
	e.eventually("prod", "both entries", func(m map[string]store.Entry) bool { return len(m) == 2 })
	stop()

	e.c.DeletePod(t, gone)
	e.pod("new", nil)
	e.identity("web", map[string]any{"spiffeIDTemplate": "spiffe://example.org/v2/{{ .PodMeta.Name }}"})
	e.start("prod", nil)
	got := e.eventually("prod", "caught up", func(m map[string]store.Entry) bool {
		return len(m) == 2 && m["web "+e.ns+"/new"].SPIFFEID == "spiffe://example.org/v2/new" &&
			m["web "+e.ns+"/stays"].SPIFFEID == "spiffe://example.org/v2/stays"
	})
	assert.NotContains(t, got, "web "+e.ns+"/gone")
}

// A ClusterStaticEntry is one entry; a bad one is a condition and keeps
// the last good entry; deleting it deletes the entry.
func TestStaticEntries(t *testing.T) {
	e := newEnv(t)
	e.start("prod", nil)
	name := "db-" + e.ns
	e.apply(statics, name, map[string]any{"spiffeID": "spiffe://example.org/db", "parentID": "spiffe://example.org/tally/agent/join_token/vm1",
		"selectors": []any{"unix:uid:1000"}, "x509TTL": "30m", "dnsNames": []any{"db.example.org"}})
	got := e.eventually("prod", "the static entry", func(m map[string]store.Entry) bool { _, ok := m[name]; return ok })
	assert.Equal(t, 30*time.Minute, got[name].X509TTL)
	e.status(statics, name, func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "True" })

	e.apply(statics, name, map[string]any{"spiffeID": "spiffe://other.org/db", "parentID": "spiffe://example.org/tally/agent/join_token/vm1",
		"selectors": []any{"unix:uid:1000"}})
	s := e.status(statics, name, func(s map[string]any) bool { st, _, _ := condition(s, "Ready"); return st == "False" })
	_, _, msg := condition(s, "Ready")
	assert.Contains(t, msg, "other.org")
	assert.Equal(t, got[name], e.owned("prod")[name], "a bad spec keeps the last good entry")

	e.apply(statics, name, map[string]any{"spiffeID": "spiffe://example.org/db2", "parentID": "spiffe://example.org/tally/agent/join_token/vm1",
		"selectors": []any{"unix:uid:1000"}})
	e.eventually("prod", "the updated entry", func(m map[string]store.Entry) bool { return m[name].SPIFFEID == "spiffe://example.org/db2" })
	e.delete(statics, name)
	e.eventually("prod", "no entry", func(m map[string]store.Entry) bool { _, ok := m[name]; return !ok })
}

func agentOf(e *env) string {
	return "spiffe://example.org/tally/agent/k8s_psat/prod/" + string(e.node.UID)
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
