package fleet

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store"
)

// Snapshot returns the overview at now: the CA slots, every agent in the
// agent list or that reported, every identity the agents serve, and what is
// at risk, each list sorted with what is at risk first (agents and
// workloads then by ID, risks oldest first).
//
// At risk are: an SVID past 3/4 of its lifetime (now > NotBefore +
// 3/4 (NotAfter - NotBefore)) that the agent has not reported renewed, or
// expired; an SVID whose signer is a tainted slot; an agent with no report
// for StaleAfter (counted from when the server started, or the agent
// attested, if later); an agent whose SVID is in its last quarter or whose
// token is within TokenWarning of its expiry; an active CA slot in its last
// quarter with no prepared successor of its kind.
func (f *Fleet) Snapshot(now time.Time) Overview {
	ov := Overview{TrustDomain: f.cfg.TrustDomain.Name(), At: now}
	tainted := f.slots(&ov, now)

	f.mu.RLock()
	ids := make([]string, 0, max(len(f.known), len(f.reports)))
	for id := range f.known {
		ids = append(ids, id)
	}
	for id := range f.reports {
		if _, ok := f.known[id]; !ok {
			ids = append(ids, id)
		}
	}
	n := 0
	for _, st := range f.reports {
		n += len(st.svids)
	}
	ov.Agents = make([]Agent, 0, len(ids))
	ov.Workloads = make([]Workload, 0, n)
	for _, id := range ids {
		f.agent(&ov, id, now, tainted)
	}
	f.mu.RUnlock()

	slices.SortFunc(ov.Agents, func(a, b Agent) int {
		return cmp.Or(atRiskFirst(a.AtRisk, b.AtRisk), strings.Compare(a.ID, b.ID))
	})
	ov.Workloads = sortWorkloads(ov.Workloads)
	slices.SortFunc(ov.AtRisk, func(a, b Risk) int {
		return cmp.Or(a.Since.Compare(b.Since), strings.Compare(string(a.Kind), string(b.Kind)),
			strings.Compare(a.Subject, b.Subject), strings.Compare(a.AgentID, b.AgentID), strings.Compare(a.EntryID, b.EntryID))
	})
	ov.Totals.Agents, ov.Totals.Workloads = len(ov.Agents), len(ov.Workloads)
	for i := range ov.Agents {
		if len(ov.Agents[i].AtRisk) > 0 {
			ov.Totals.AgentsAtRisk++
		}
	}
	for i := range ov.Workloads {
		if len(ov.Workloads[i].AtRisk) > 0 {
			ov.Totals.WorkloadsAtRisk++
		}
	}
	return ov
}

// sortWorkloads returns ws sorted: at risk first, those by expiry; then by
// SPIFFE ID, agent and entry. It sorts indices, not the large structs.
func sortWorkloads(ws []Workload) []Workload {
	order := make([]int32, len(ws))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(i, j int32) int {
		a, b := &ws[i], &ws[j]
		if c := atRiskFirst(a.AtRisk, b.AtRisk); c != 0 {
			return c
		}
		if len(a.AtRisk) > 0 {
			if c := a.NotAfter.Compare(b.NotAfter); c != 0 {
				return c
			}
		}
		return cmp.Or(strings.Compare(a.SPIFFEID, b.SPIFFEID), strings.Compare(a.AgentID, b.AgentID), strings.Compare(a.EntryID, b.EntryID))
	})
	out := make([]Workload, len(ws))
	for k, i := range order {
		out[k] = ws[i]
	}
	return out
}

func atRiskFirst(a, b []string) int {
	switch {
	case len(a) > 0 && len(b) == 0:
		return -1
	case len(a) == 0 && len(b) > 0:
		return 1
	}
	return 0
}

// lastQuarter is when an SVID or slot valid from nb to na enters the last
// quarter of its lifetime.
func lastQuarter(nb, na time.Time) time.Time {
	return nb.Add(na.Sub(nb) / 4 * 3)
}

// slots adds the CA slots to ov and returns the tainted ones with when they
// were tainted.
func (f *Fleet) slots(ov *Overview, now time.Time) map[string]time.Time {
	if f.cfg.Slots == nil {
		return nil
	}
	infos := f.cfg.Slots.Slots()
	tainted := map[string]time.Time{}
	ov.Slots = make([]Slot, 0, len(infos))
	for _, s := range infos {
		sl := Slot{Kind: string(s.Kind), ID: s.ID, Status: string(s.Status), NotBefore: s.NotBefore, NotAfter: s.NotAfter,
			ActivatedAt: s.ActivatedAt, Tainted: s.Tainted}
		if s.Tainted && s.Kind == ca.KindX509 {
			tainted[s.ID] = s.TaintedAt
		}
		if q := lastQuarter(s.NotBefore, s.NotAfter); s.Status == ca.StatusActive && now.After(q) && !hasPrepared(infos, s.Kind) {
			reason := fmt.Sprintf("active key in the last quarter of its life (expires %s) and no successor prepared", stamp(s.NotAfter))
			sl.AtRisk = append(sl.AtRisk, reason)
			ov.AtRisk = append(ov.AtRisk, Risk{Kind: RiskSlotNoSuccessor, Subject: string(s.Kind) + " slot " + s.ID, Reason: reason, Since: q})
		}
		ov.Slots = append(ov.Slots, sl)
	}
	return tainted
}

func hasPrepared(infos []ca.SlotInfo, k ca.Kind) bool {
	return slices.ContainsFunc(infos, func(s ca.SlotInfo) bool { return s.Kind == k && s.Status == ca.StatusPrepared })
}

// agent adds the agent id and what it serves to ov. f.mu is read-locked.
func (f *Fleet) agent(ov *Overview, id string, now time.Time, tainted map[string]time.Time) {
	sa, inList := f.known[id]
	st := f.reports[id]
	a := Agent{ID: id, AttestationType: sa.AttestationType, Banned: sa.Banned, Node: nodeOf(sa), SVIDNotAfter: sa.ExpiresAt}
	if st != nil {
		a.LastReport, a.TokenNotAfter, a.LastRotation, a.Workloads = st.lastReport, st.tokenNotAfter, st.lastRotation, len(st.svids)
		if !st.svidNotAfter.IsZero() {
			a.SVIDNotAfter = st.svidNotAfter
		}
	}
	risk := func(k RiskKind, since time.Time, format string, args ...any) {
		reason := fmt.Sprintf(format, args...)
		a.AtRisk = append(a.AtRisk, reason)
		ov.AtRisk = append(ov.AtRisk, Risk{Kind: k, Subject: id, Reason: reason, Since: since})
	}
	if !a.Banned {
		from := later(f.started, sa.AttestedAt)
		if st != nil {
			from = later(from, st.lastReport)
		}
		if stale := from.Add(f.cfg.StaleAfter); now.After(stale) {
			if st == nil {
				risk(RiskAgentStale, stale, "no report since the server started %s", stamp(f.started))
			} else {
				risk(RiskAgentStale, stale, "no report since %s", stamp(st.lastReport))
			}
		}
		if inList && !a.SVIDNotAfter.IsZero() {
			life := sa.ExpiresAt.Sub(later(sa.RenewedAt, sa.AttestedAt))
			switch q := a.SVIDNotAfter.Add(-life / 4); {
			case !now.Before(a.SVIDNotAfter):
				risk(RiskAgentSVIDExpiring, a.SVIDNotAfter, "agent SVID expired %s", stamp(a.SVIDNotAfter))
			case life > 0 && now.After(q):
				risk(RiskAgentSVIDExpiring, q, "agent SVID in its last quarter, expires %s", stamp(a.SVIDNotAfter))
			}
		}
		if t := a.TokenNotAfter; !t.IsZero() {
			switch w := t.Add(-f.cfg.TokenWarning); {
			case !now.Before(t):
				risk(RiskAgentTokenExpiring, t, "service-account token expired %s", stamp(t))
			case now.After(w):
				risk(RiskAgentTokenExpiring, w, "service-account token expires %s", stamp(t))
			}
		}
	}
	ov.Agents = append(ov.Agents, a)
	if st == nil {
		return
	}
	for entryID, s := range st.svids {
		w := Workload{EntryID: entryID, SPIFFEID: s.spiffeID, AgentID: id, Node: a.Node, Namespace: s.namespace, Pod: s.pod,
			Serial: s.serial, NotBefore: s.notBefore, NotAfter: s.notAfter, Subscribers: s.subscribers,
			LastError: s.lastError, SignerID: s.signerID, Renewals: s.renewals}
		risk := func(k RiskKind, since time.Time, reason string) {
			w.AtRisk = append(w.AtRisk, reason)
			ov.AtRisk = append(ov.AtRisk, Risk{Kind: k, Subject: s.spiffeID, AgentID: id, EntryID: entryID, Reason: reason, Since: since})
		}
		switch q := lastQuarter(s.notBefore, s.notAfter); {
		case s.notAfter.IsZero():
		case !now.Before(s.notAfter):
			risk(RiskSVIDExpired, s.notAfter, "expired "+stamp(s.notAfter)+notRenewed(s.lastError))
		case now.After(q):
			risk(RiskSVIDExpiring, q, "past 3/4 of its lifetime, expires "+stamp(s.notAfter)+notRenewed(s.lastError))
		}
		if since, ok := tainted[s.signerID]; ok && s.signerID != "" {
			risk(RiskTaintedSigner, since, "signed by tainted key "+s.signerID)
		}
		ov.Workloads = append(ov.Workloads, w)
	}
}

func notRenewed(lastError string) string {
	if lastError == "" {
		return ", not renewed"
	}
	return ", not renewed: " + lastError
}

// nodeOf is the Kubernetes node of a k8s_psat agent.
func nodeOf(a store.Agent) string {
	for _, s := range a.Selectors {
		if s.Type == "k8s_psat" {
			if n, ok := strings.CutPrefix(s.Value, "agent_node_name:"); ok {
				return n
			}
		}
	}
	return ""
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
