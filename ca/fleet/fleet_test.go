package fleet

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

var (
	t0 = time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	td = spiffeid.RequireTrustDomainFromString("example.org")
)

const (
	agentA = "spiffe://example.org/tally/agent/k8s_psat/prod/node-a-uid"
	agentB = "spiffe://example.org/tally/agent/join_token/b"
)

// fakeSlots is the authority's slot list, as the test sets it.
type fakeSlots struct {
	mu    sync.Mutex
	slots []ca.SlotInfo
}

func (f *fakeSlots) Slots() []ca.SlotInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.slots)
}

func (f *fakeSlots) set(slots ...ca.SlotInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slots = slots
}

// x509NotBefore starts the X.509 key's 4h life: its last quarter starts at t0+40m.
var x509NotBefore = t0.Add(40*time.Minute - 3*time.Hour)

// env is a Fleet on a real badger store holding agents a (k8s_psat, SVID
// from t0 to t0+1h) and b (join_token, attested at t0), and an entry "e-web"
// with k8s selectors; the slots are an active X.509 key (x509NotBefore) with
// no successor and an active JWT key with one.
type env struct {
	f     *Fleet
	clk   *clocktesting.FakeClock
	st    *badgerstore.Store
	slots *fakeSlots
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir(), MemTableSize: 1 << 20})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	require.NoError(t, st.PutAgent(ctx, store.Agent{ID: agentA, AttestationType: "k8s_psat", SerialNumber: "a1",
		ExpiresAt: t0.Add(time.Hour), AttestedAt: t0, RenewedAt: t0,
		Selectors: []store.Selector{{Type: "k8s_psat", Value: "agent_node_name:node-a"}, {Type: "k8s_psat", Value: "cluster:prod"}}}))
	require.NoError(t, st.PutAgent(ctx, store.Agent{ID: agentB, AttestationType: "join_token", SerialNumber: "b1",
		ExpiresAt: t0.Add(time.Hour), AttestedAt: t0, RenewedAt: t0}))
	_, err = st.CreateEntries(ctx, []store.Entry{{ID: "e-web", SPIFFEID: "spiffe://example.org/web", ParentID: agentA,
		Selectors: []store.Selector{{Type: "k8s", Value: "ns:shop"}, {Type: "k8s", Value: "pod-name:web-7d9"}}}})
	require.NoError(t, err)

	slots := &fakeSlots{}
	slots.set(
		ca.SlotInfo{Kind: ca.KindX509, ID: "x1", Status: ca.StatusActive, NotBefore: x509NotBefore, NotAfter: x509NotBefore.Add(4 * time.Hour), ActivatedAt: x509NotBefore},
		ca.SlotInfo{Kind: ca.KindJWT, ID: "j1", Status: ca.StatusActive, NotBefore: t0.Add(-12 * time.Hour), NotAfter: t0.Add(12 * time.Hour), ActivatedAt: t0.Add(-11 * time.Hour)},
		ca.SlotInfo{Kind: ca.KindJWT, ID: "j2", Status: ca.StatusPrepared, NotBefore: t0, NotAfter: t0.Add(36 * time.Hour)},
	)
	clk := clocktesting.NewFakeClock(t0)
	f := New(Config{TrustDomain: td, Slots: slots, Agents: st, Entries: st, Clock: clk})
	require.NoError(t, f.Refresh(ctx))
	return &env{f: f, clk: clk, st: st, slots: slots}
}

func svid(entry, id, serial string, nb time.Time, ttl time.Duration) *tallyv1.ServedSVID {
	return &tallyv1.ServedSVID{EntryId: entry, SpiffeId: id, Serial: serial, NotBefore: nb.Unix(), NotAfter: nb.Add(ttl).Unix(),
		Subscribers: 1, SignerId: "x1"}
}

func workloads(ov Overview) map[string]Workload {
	out := map[string]Workload{}
	for _, w := range ov.Workloads {
		out[w.AgentID+" "+w.EntryID] = w
	}
	return out
}

func agents(ov Overview) map[string]Agent {
	out := map[string]Agent{}
	for _, a := range ov.Agents {
		out[a.ID] = a
	}
	return out
}

func risks(ov Overview) []string {
	var out []string
	for _, r := range ov.AtRisk {
		out = append(out, string(r.Kind)+" "+r.Subject)
	}
	return out
}

func TestReport(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	f := e.f

	require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Full: true, AgentSvidNotAfter: t0.Add(time.Hour).Unix(),
		AgentTokenNotAfter: t0.Add(time.Hour).Unix(), Svids: []*tallyv1.ServedSVID{
			svid("e-web", "spiffe://example.org/web", "aa", t0, time.Hour),
			svid("e-db", "spiffe://example.org/ns/data/sa/db", "bb", t0, time.Hour),
		}}))
	ov := f.Snapshot(t0)
	w := workloads(ov)
	require.Len(t, w, 2)
	web := w[agentA+" e-web"]
	require.Equal(t, Workload{EntryID: "e-web", SPIFFEID: "spiffe://example.org/web", AgentID: agentA, Node: "node-a",
		Namespace: "shop", Pod: "web-7d9", Serial: "aa", NotBefore: t0, NotAfter: t0.Add(time.Hour), Subscribers: 1, SignerID: "x1"}, web)
	require.Equal(t, "data", w[agentA+" e-db"].Namespace, "from the /ns/ path: e-db is not in the store")
	a := agents(ov)[agentA]
	require.Equal(t, "node-a", a.Node)
	require.Equal(t, "k8s_psat", a.AttestationType)
	require.Equal(t, 2, a.Workloads)
	require.True(t, a.LastReport.Equal(t0))
	require.True(t, a.TokenNotAfter.Equal(t0.Add(time.Hour)))

	t.Run("a partial report merges, renews and removes", func(t *testing.T) {
		e.clk.Step(30 * time.Minute)
		renewed := svid("e-web", "spiffe://example.org/web", "cc", t0.Add(30*time.Minute), time.Hour)
		renewed.Subscribers = 3
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{renewed},
			RemovedEntryIds: []string{"e-db"}}))
		ov := f.Snapshot(e.clk.Now())
		w := workloads(ov)
		require.Len(t, w, 1)
		web := w[agentA+" e-web"]
		require.Equal(t, "cc", web.Serial)
		require.Equal(t, 1, web.Renewals)
		require.Equal(t, 3, web.Subscribers)
		require.Equal(t, "shop", web.Namespace, "placement kept")
		a := agents(ov)[agentA]
		require.True(t, a.TokenNotAfter.Equal(t0.Add(time.Hour)), "a partial report's 0 keeps it")
		require.True(t, a.LastRotation.Equal(t0.Add(30*time.Minute)))
		require.True(t, a.LastReport.Equal(t0.Add(30*time.Minute)))
	})
	t.Run("a full report replaces", func(t *testing.T) {
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Full: true, Svids: []*tallyv1.ServedSVID{
			svid("e-other", "spiffe://example.org/other", "dd", t0, time.Hour),
		}}))
		ov := f.Snapshot(e.clk.Now())
		w := workloads(ov)
		require.Len(t, w, 1)
		require.Contains(t, w, agentA+" e-other")
		require.True(t, agents(ov)[agentA].TokenNotAfter.IsZero(), "a full report's 0 is none")
	})
	t.Run("renewal errors are counted when they change", func(t *testing.T) {
		failing := svid("e-other", "spiffe://example.org/other", "dd", t0, time.Hour)
		failing.LastError = "rpc error: code = Unavailable " + strings.Repeat("x", 1000)
		for range 3 {
			require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{failing}}))
		}
		failing.LastError = "another"
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{failing}}))
		f.mu.RLock()
		require.Equal(t, uint64(2), f.failures)
		f.mu.RUnlock()
		failing.LastError = "rpc error: code = Unavailable " + strings.Repeat("x", 1000)
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{failing}}))
		require.Len(t, workloads(f.Snapshot(e.clk.Now()))[agentA+" e-other"].LastError, maxErrorLen, "cut")
	})
}

func TestReportInvalid(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	f := New(Config{TrustDomain: td, Agents: e.st, Clock: e.clk, MaxSVIDsPerAgent: 2})
	require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Full: true, Svids: []*tallyv1.ServedSVID{
		svid("e1", "spiffe://example.org/1", "01", t0, time.Hour)}}))
	for _, tc := range []struct {
		name string
		req  *tallyv1.ReportSVIDsRequest
	}{
		{"no entry ID", &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{{SpiffeId: "spiffe://example.org/x"}}}},
		{"negative subscribers", &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{{EntryId: "e2", Subscribers: -1}}}},
		{"a long SPIFFE ID", &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{{EntryId: "e2", SpiffeId: strings.Repeat("a", maxIDLen+1)}}}},
		{"a long serial", &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{{EntryId: "e2", Serial: strings.Repeat("a", 65)}}}},
		{"more than the agent may serve", &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{
			svid("e2", "spiffe://example.org/2", "02", t0, time.Hour), svid("e3", "spiffe://example.org/3", "03", t0, time.Hour)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.Report(ctx, agentA, tc.req)
			require.True(t, errors.Is(err, ErrInvalid), "%v", err)
			w := workloads(f.Snapshot(t0))
			require.Len(t, w, 1, "nothing applied")
			require.Contains(t, w, agentA+" e1")
		})
	}
}

// TestReportAtTheBound: removals count before additions.
func TestReportAtTheBound(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	f := New(Config{TrustDomain: td, Agents: e.st, Clock: e.clk, MaxSVIDsPerAgent: 2})
	require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Full: true, Svids: []*tallyv1.ServedSVID{
		svid("e1", "spiffe://example.org/1", "01", t0, time.Hour), svid("e2", "spiffe://example.org/2", "02", t0, time.Hour)}}))
	require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{RemovedEntryIds: []string{"e1", "e1", "nope"},
		Svids: []*tallyv1.ServedSVID{svid("e2", "spiffe://example.org/2", "03", t0, time.Hour), svid("e3", "spiffe://example.org/3", "04", t0, time.Hour)}}))
	w := workloads(f.Snapshot(t0))
	require.Len(t, w, 2)
	require.Equal(t, 1, w[agentA+" e2"].Renewals)
	require.Contains(t, w, agentA+" e3")
}

func TestSnapshotRisks(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	f := e.f
	require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Full: true, AgentSvidNotAfter: t0.Add(time.Hour).Unix(), Svids: []*tallyv1.ServedSVID{
		svid("e-web", "spiffe://example.org/web", "aa", t0, time.Hour),                      // 3/4 at t0+45m
		svid("e-api", "spiffe://example.org/api", "bb", t0.Add(-30*time.Minute), time.Hour), // 3/4 at t0+15m
	}}))

	t.Run("nothing at risk", func(t *testing.T) {
		ov := f.Snapshot(t0.Add(time.Minute))
		require.Empty(t, ov.AtRisk)
		require.Equal(t, RiskCounts{Agents: 2, Workloads: 2}, ov.Totals)
		require.Len(t, ov.Slots, 3)
	})
	t.Run("past 3/4, and an agent that never reported", func(t *testing.T) {
		now := t0.Add(16 * time.Minute)
		e.clk.SetTime(now)
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{})) // a heartbeat
		ov := f.Snapshot(now)
		require.Equal(t, []string{"agent_stale " + agentB, "svid_expiring spiffe://example.org/api"}, risks(ov))
		require.True(t, ov.AtRisk[0].Since.Equal(t0.Add(3*time.Minute)), "StaleAfter from the start: %v", ov.AtRisk[0].Since)
		require.True(t, ov.AtRisk[1].Since.Equal(t0.Add(15*time.Minute)))
		require.Equal(t, agentA, ov.AtRisk[1].AgentID)
		require.Equal(t, "e-api", ov.AtRisk[1].EntryID)
		require.Equal(t, "spiffe://example.org/api", ov.Workloads[0].SPIFFEID, "at risk first")
		require.NotEmpty(t, ov.Workloads[0].AtRisk)
		require.Empty(t, ov.Workloads[1].AtRisk)
		require.Equal(t, agentB, ov.Agents[0].ID, "at risk first")
		require.Equal(t, RiskCounts{Agents: 2, AgentsAtRisk: 1, Workloads: 2, WorkloadsAtRisk: 1}, ov.Totals)
	})
	t.Run("expired, an agent gone quiet, its SVID in the last quarter, the X.509 key without successor", func(t *testing.T) {
		now := t0.Add(50 * time.Minute)
		ov := f.Snapshot(now)
		require.ElementsMatch(t, []string{
			"slot_no_successor x509 slot x1",
			"agent_stale " + agentB,
			"agent_stale " + agentA,
			"svid_expiring spiffe://example.org/web",
			"svid_expired spiffe://example.org/api",
			"agent_svid_expiring " + agentA,
			"agent_svid_expiring " + agentB,
		}, risks(ov))
		require.True(t, slices.IsSortedFunc(ov.AtRisk, func(a, b Risk) int { return a.Since.Compare(b.Since) }))
		require.NotEmpty(t, ov.Slots[0].AtRisk)
		require.Empty(t, ov.Slots[1].AtRisk, "the JWT key has a successor")
	})
	t.Run("a tainted signer", func(t *testing.T) {
		taintedAt := t0.Add(-time.Hour)
		e.slots.set(append(e.slots.Slots(), ca.SlotInfo{Kind: ca.KindX509, ID: "x0", Status: ca.StatusOld, Tainted: true, TaintedAt: taintedAt,
			NotBefore: t0.Add(-24 * time.Hour), NotAfter: t0.Add(time.Hour)})...)
		old := svid("e-old", "spiffe://example.org/old", "ee", t0, time.Hour)
		old.SignerId = "x0"
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Svids: []*tallyv1.ServedSVID{old}}))
		ov := f.Snapshot(t0)
		require.Equal(t, []string{"tainted_signer spiffe://example.org/old"}, risks(ov))
		require.True(t, ov.AtRisk[0].Since.Equal(taintedAt))
		require.Equal(t, "signed by tainted key x0", ov.Workloads[0].AtRisk[0])
		require.True(t, ov.Slots[3].Tainted)
		require.NoError(t, f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{RemovedEntryIds: []string{"e-old"}}))
	})
	t.Run("a token about to expire", func(t *testing.T) {
		require.NoError(t, f.Report(ctx, agentB, &tallyv1.ReportSVIDsRequest{Full: true, AgentTokenNotAfter: t0.Add(10 * time.Minute).Unix()}))
		require.NotContains(t, risks(f.Snapshot(t0.Add(4*time.Minute))), "agent_token_expiring "+agentB)
		require.Contains(t, risks(f.Snapshot(t0.Add(6*time.Minute))), "agent_token_expiring "+agentB)
		require.Contains(t, risks(f.Snapshot(t0.Add(11*time.Minute))), "agent_token_expiring "+agentB)
	})
}

func TestRefresh(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	require.NoError(t, e.f.Report(ctx, agentB, &tallyv1.ReportSVIDsRequest{Full: true, Svids: []*tallyv1.ServedSVID{
		svid("e1", "spiffe://example.org/1", "01", t0, time.Hour)}}))
	updates, stop := e.f.Subscribe()
	defer stop()

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- e.f.Run(runCtx) }()
	<-updates // the first read

	require.NoError(t, e.st.DeleteAgent(ctx, agentB))
	e.clk.Step(time.Second)
	require.Eventually(t, func() bool {
		e.clk.Step(time.Minute)
		select {
		case <-updates:
		case <-time.After(10 * time.Millisecond):
		}
		return len(e.f.Snapshot(e.clk.Now()).Agents) == 1
	}, 10*time.Second, time.Millisecond)
	ov := e.f.Snapshot(e.clk.Now())
	require.Equal(t, agentA, ov.Agents[0].ID)
	require.Empty(t, ov.Workloads, "the evicted agent's report is forgotten")
	cancel()
	require.NoError(t, <-done)
}

func TestSubscribe(t *testing.T) {
	e := newEnv(t)
	ch, stop := e.f.Subscribe()
	for range 10 {
		require.NoError(t, e.f.Report(context.Background(), agentA, &tallyv1.ReportSVIDsRequest{}))
	}
	<-ch
	select {
	case <-ch:
		t.Fatal("not coalesced")
	default:
	}
	stop()
	require.NoError(t, e.f.Report(context.Background(), agentA, &tallyv1.ReportSVIDsRequest{}))
	select {
	case <-ch:
		t.Fatal("a value after unsubscribing")
	default:
	}
}

func TestCollector(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.f.cfg.IssuanceFailures = func() uint64 { return 5 }
	failing := svid("e-web", "spiffe://example.org/web", "aa", t0, time.Hour)
	failing.LastError = "boom"
	require.NoError(t, e.f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{Full: true, Svids: []*tallyv1.ServedSVID{failing}}))
	e.clk.Step(50 * time.Minute)
	require.NoError(t, e.f.Report(ctx, agentA, &tallyv1.ReportSVIDsRequest{}))
	e.clk.Step(30 * time.Second)

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(e.f.Collector()))
	families, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += " " + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.GetGauge() != nil:
				got[name] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[name] = m.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, map[string]float64{
		"tally_server_agent_last_report_age_seconds agent=" + agentA:         30,
		"tally_server_agent_last_rotation_timestamp_seconds agent=" + agentA: float64(t0.Unix()),
		"tally_server_ca_slot_last_rotation_timestamp_seconds kind=jwt":      float64(t0.Add(-11 * time.Hour).Unix()),
		"tally_server_ca_slot_last_rotation_timestamp_seconds kind=x509":     float64(x509NotBefore.Unix()),
		"tally_server_rotation_failures_total":                               6,
		"tally_server_svids_at_risk reason=agent_svid_expiring":              2,
		"tally_server_svids_at_risk reason=svid_expired":                     0,
		"tally_server_svids_at_risk reason=svid_expiring":                    1,
		"tally_server_svids_at_risk reason=tainted_signer":                   0,
	}, got)
}
