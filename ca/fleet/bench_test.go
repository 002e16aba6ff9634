package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// agentList is a fixed agent list.
type agentList []store.Agent

func (l agentList) ListAgents(context.Context) ([]store.Agent, error) { return l, nil }

// benchFleet is 100 agents serving 100 identities each, one in ten of them
// past 3/4 of its lifetime at t0.
func benchFleet(b *testing.B) *Fleet {
	b.Helper()
	ctx := context.Background()
	var list agentList
	for i := range 100 {
		list = append(list, store.Agent{ID: fmt.Sprintf("spiffe://example.org/tally/agent/k8s_psat/prod/uid-%03d", i), AttestationType: "k8s_psat",
			ExpiresAt: t0.Add(time.Hour), AttestedAt: t0, RenewedAt: t0,
			Selectors: []store.Selector{{Type: "k8s_psat", Value: fmt.Sprintf("agent_node_name:node-%03d", i)}}})
	}
	slots := &fakeSlots{}
	slots.set(ca.SlotInfo{Kind: ca.KindX509, ID: "x1", Status: ca.StatusActive, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour)},
		ca.SlotInfo{Kind: ca.KindX509, ID: "x0", Status: ca.StatusOld, Tainted: true, NotBefore: t0.Add(-24 * time.Hour), NotAfter: t0.Add(time.Hour)})
	f := New(Config{TrustDomain: td, Slots: slots, Agents: list, Clock: clocktesting.NewFakeClock(t0)})
	if err := f.Refresh(ctx); err != nil {
		b.Fatal(err)
	}
	for i, a := range list {
		req := &tallyv1.ReportSVIDsRequest{Full: true, AgentSvidNotAfter: t0.Add(time.Hour).Unix()}
		for j := range 100 {
			nb := t0.Add(-10 * time.Minute)
			if j%10 == 0 {
				nb = t0.Add(-50 * time.Minute)
			}
			req.Svids = append(req.Svids, &tallyv1.ServedSVID{EntryId: fmt.Sprintf("entry-%03d-%03d", i, j),
				SpiffeId: fmt.Sprintf("spiffe://example.org/ns/team-%d/sa/svc-%d", j%7, j), Serial: fmt.Sprintf("%032x", i*1000+j),
				NotBefore: nb.Unix(), NotAfter: nb.Add(time.Hour).Unix(), Subscribers: 2, SignerId: "x1"})
		}
		if err := f.Report(ctx, a.ID, req); err != nil {
			b.Fatal(err)
		}
	}
	return f
}

// BenchmarkSnapshot is the overview of 10,000 workloads on 100 agents.
func BenchmarkSnapshot(b *testing.B) {
	f := benchFleet(b)
	if ov := f.Snapshot(t0); len(ov.Workloads) != 10_000 || ov.Totals.WorkloadsAtRisk != 1000 {
		b.Fatalf("%d workloads, %d at risk", len(ov.Workloads), ov.Totals.WorkloadsAtRisk)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = f.Snapshot(t0)
	}
}

// BenchmarkReport is one agent's partial report of 10 renewals, among
// 10,000 workloads.
func BenchmarkReport(b *testing.B) {
	f := benchFleet(b)
	ctx := context.Background()
	agent := "spiffe://example.org/tally/agent/k8s_psat/prod/uid-042"
	req := &tallyv1.ReportSVIDsRequest{}
	for j := range 10 {
		req.Svids = append(req.Svids, &tallyv1.ServedSVID{EntryId: fmt.Sprintf("entry-042-%03d", j), SpiffeId: fmt.Sprintf("spiffe://example.org/ns/team-%d/sa/svc-%d", j%7, j),
			Serial: fmt.Sprintf("%032x", j), NotBefore: t0.Unix(), NotAfter: t0.Add(time.Hour).Unix(), SignerId: "x1"})
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := f.Report(ctx, agent, req); err != nil {
			b.Fatal(err)
		}
	}
}
