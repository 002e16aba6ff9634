package serverapp

import (
	"time"

	"github.com/tallyid/tally/ca/dashboard"
	"github.com/tallyid/tally/ca/fleet"
	"github.com/tallyid/tally/ca/records"
)

// dashboardSource shows the fleet's overview and the records' issuances on
// the dashboard.
type dashboardSource struct {
	fleet   *fleet.Fleet
	records *records.Recorder
}

func (d dashboardSource) Overview(now time.Time) dashboard.Overview {
	ov := d.fleet.Snapshot(now)
	out := dashboard.Overview{
		TrustDomain: ov.TrustDomain,
		Slots:       make([]dashboard.Slot, len(ov.Slots)),
		Agents:      make([]dashboard.Agent, len(ov.Agents)),
		Workloads:   make([]dashboard.Workload, len(ov.Workloads)),
		AtRisk:      make([]dashboard.Risk, len(ov.AtRisk)),
	}
	for i, s := range ov.Slots {
		out.Slots[i] = dashboard.Slot{Kind: s.Kind, Status: s.Status, ID: s.ID, NotBefore: s.NotBefore, NotAfter: s.NotAfter,
			ActivatedAt: s.ActivatedAt, Tainted: s.Tainted, AtRisk: s.AtRisk}
	}
	for i, a := range ov.Agents {
		out.Agents[i] = dashboard.Agent{ID: a.ID, Node: a.Node, AttestationType: a.AttestationType, Banned: a.Banned,
			LastReport: a.LastReport, SVIDNotAfter: a.SVIDNotAfter, TokenNotAfter: a.TokenNotAfter, Workloads: a.Workloads, AtRisk: a.AtRisk}
	}
	for i, w := range ov.Workloads {
		out.Workloads[i] = dashboard.Workload{SPIFFEID: w.SPIFFEID, EntryID: w.EntryID, AgentID: w.AgentID, Node: w.Node,
			Namespace: w.Namespace, Pod: w.Pod, Serial: w.Serial, SignerID: w.SignerID, NotBefore: w.NotBefore, NotAfter: w.NotAfter,
			Renewals: w.Renewals, Subscribers: w.Subscribers, LastError: w.LastError, AtRisk: w.AtRisk}
	}
	for i, r := range ov.AtRisk {
		out.AtRisk[i] = dashboard.Risk{Kind: r.Kind.Subject(), Subject: r.Subject, Reason: r.Reason, Since: r.Since}
	}
	return out
}

// Buckets counts X.509 and JWT issuances together.
func (d dashboardSource) Buckets(since time.Time) []dashboard.Bucket {
	in := d.records.Buckets(since)
	out := make([]dashboard.Bucket, len(in))
	for i, b := range in {
		out[i] = dashboard.Bucket{Minute: b.Start, First: b.X509.First + b.JWT.First,
			Renewals: b.X509.Renewals + b.JWT.Renewals, Failures: b.X509.Failures + b.JWT.Failures}
	}
	return out
}

// Subscribe fans the fleet's and the records' changes into one channel.
func (d dashboardSource) Subscribe() (<-chan struct{}, func()) {
	fc, fcancel := d.fleet.Subscribe()
	rc, rcancel := d.records.Subscribe()
	out := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() { // ends with the subscription
		for {
			select {
			case <-done:
				return
			case <-fc:
			case <-rc:
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out, func() { fcancel(); rcancel(); close(done) }
}
