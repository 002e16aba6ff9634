package fleet

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	atRiskDesc = prometheus.NewDesc("tally_server_svids_at_risk",
		"SVIDs at risk, by reason: svid_expiring, svid_expired, tainted_signer (workload SVIDs as agents report them), agent_svid_expiring.",
		[]string{"reason"}, nil)
	reportAgeDesc = prometheus.NewDesc("tally_server_agent_last_report_age_seconds",
		"Seconds since each agent last reported what it serves (agents that reported since the server started).",
		[]string{"agent"}, nil)
	rotationFailuresDesc = prometheus.NewDesc("tally_server_rotation_failures_total",
		"SVID rotation failures: renewal errors agents reported (each new last_error) and failed issuances.",
		nil, nil)
	agentRotationDesc = prometheus.NewDesc("tally_server_agent_last_rotation_timestamp_seconds",
		"NotBefore (Unix seconds) of the newest SVID each agent reported.",
		[]string{"agent"}, nil)
	slotRotationDesc = prometheus.NewDesc("tally_server_ca_slot_last_rotation_timestamp_seconds",
		"When a CA slot of each kind (x509, jwt) last activated (Unix seconds).",
		[]string{"kind"}, nil)
)

// svidRisks are the reasons of tally_server_svids_at_risk, always exported.
var svidRisks = []RiskKind{RiskSVIDExpiring, RiskSVIDExpired, RiskTaintedSigner, RiskAgentSVIDExpiring}

// Collector returns the fleet's Prometheus metrics, computed at each scrape
// from a Snapshot at the clock's now. Register it once.
func (f *Fleet) Collector() prometheus.Collector { return collector{f} }

type collector struct{ f *Fleet }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{atRiskDesc, reportAgeDesc, rotationFailuresDesc, agentRotationDesc, slotRotationDesc} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	f := c.f
	now := f.cfg.Clock.Now()
	ov := f.Snapshot(now)

	risks := make(map[RiskKind]int, len(svidRisks))
	for _, r := range ov.AtRisk {
		risks[r.Kind]++
	}
	for _, k := range svidRisks {
		ch <- prometheus.MustNewConstMetric(atRiskDesc, prometheus.GaugeValue, float64(risks[k]), string(k))
	}
	for _, a := range ov.Agents {
		if !a.LastReport.IsZero() {
			ch <- prometheus.MustNewConstMetric(reportAgeDesc, prometheus.GaugeValue, now.Sub(a.LastReport).Seconds(), a.ID)
		}
		if !a.LastRotation.IsZero() {
			ch <- prometheus.MustNewConstMetric(agentRotationDesc, prometheus.GaugeValue, float64(a.LastRotation.Unix()), a.ID)
		}
	}
	f.mu.RLock()
	failures := f.failures
	f.mu.RUnlock()
	if f.cfg.IssuanceFailures != nil {
		failures += f.cfg.IssuanceFailures()
	}
	ch <- prometheus.MustNewConstMetric(rotationFailuresDesc, prometheus.CounterValue, float64(failures))

	activated := map[string]int64{}
	for _, s := range ov.Slots {
		if !s.ActivatedAt.IsZero() && s.ActivatedAt.Unix() > activated[s.Kind] {
			activated[s.Kind] = s.ActivatedAt.Unix()
		}
	}
	for kind, t := range activated {
		ch <- prometheus.MustNewConstMetric(slotRotationDesc, prometheus.GaugeValue, float64(t), kind)
	}
}
