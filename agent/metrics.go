package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's own measurements (the Workload API server adds
// its connection and served counters).
type Metrics struct {
	rotations    prometheus.Counter
	minted       *prometheus.CounterVec
	firstSVID    prometheus.Histogram
	syncLag      prometheus.Histogram
	syncUpdates  prometheus.Counter
	reconnects   prometheus.Counter
	attestations prometheus.Counter

	jwtCacheEntries   prometheus.Gauge
	jwtCacheEvictions prometheus.Counter
	jwtMintsLimited   prometheus.Counter

	agentSVIDExpiry  prometheus.Gauge
	agentTokenExpiry prometheus.Gauge
	lastRotation     prometheus.Gauge
	rotationFailures *prometheus.CounterVec
	reports          *prometheus.CounterVec
}

// Values of the svid label of tally_agent_svid_rotation_failures_total.
const (
	svidAgent    = "agent"
	svidWorkload = "workload"
)

// NewMetrics registers the agent metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_agent_svid_rotations_total", Help: "Workload X509-SVIDs replaced by a renewed one.",
		}),
		minted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_agent_svids_minted_total", Help: "Workload SVIDs the server signed for this agent, by type and result.",
		}, []string{"type", "result"}),
		firstSVID: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_agent_time_to_first_svid_seconds",
			Help:    "From a workload's FetchX509SVID to its first response.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		syncLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_agent_sync_lag_seconds",
			Help:    "From the server's registry reaching a revision to this agent applying it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		syncUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_agent_sync_updates_total", Help: "Entry sync messages applied.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_agent_sync_reconnects_total", Help: "Entry sync streams re-opened after a failure.",
		}),
		attestations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_agent_node_attestations_total", Help: "Times this agent attested itself to the server.",
		}),
		jwtCacheEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_agent_jwt_cache_entries", Help: "JWT-SVIDs cached (at most jwt_cache_size).",
		}),
		jwtCacheEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_agent_jwt_cache_evictions_total", Help: "Cached JWT-SVIDs dropped, least recently used first, to stay within jwt_cache_size.",
		}),
		jwtMintsLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_agent_jwt_mints_limited_total", Help: "JWT-SVID requests refused (ResourceExhausted) because their identity asked for fresh audiences beyond jwt_mint_rate and jwt_mint_burst.",
		}),
		agentSVIDExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_agent_svid_expiry_timestamp_seconds", Help: "When the agent's own SVID expires (Unix seconds); 0 before it has one.",
		}),
		agentTokenExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_agent_token_expiry_timestamp_seconds",
			Help: "When the projected service-account token the agent attests with (k8s_psat) expires, from its exp claim (Unix seconds); 0 if unknown or not used.",
		}),
		lastRotation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_agent_svid_last_rotation_timestamp_seconds",
			Help: "When an X509-SVID of this agent (its own or a workload's) was last issued or renewed successfully (Unix seconds); 0 before the first.",
		}),
		rotationFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_agent_svid_rotation_failures_total",
			Help: "Failed attempts to obtain or renew an X509-SVID, by svid: agent (its own, including re-attestation) or workload.",
		}, []string{"svid"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_agent_svid_reports_total", Help: "ReportSVIDs calls to the server, by kind (full, delta, heartbeat) and result (ok, error, unimplemented).",
		}, []string{"kind", "result"}),
	}
	m.rotationFailures.WithLabelValues(svidAgent)
	m.rotationFailures.WithLabelValues(svidWorkload)
	if reg != nil {
		reg.MustRegister(m.rotations, m.minted, m.firstSVID, m.syncLag, m.syncUpdates, m.reconnects, m.attestations,
			m.jwtCacheEntries, m.jwtCacheEvictions, m.jwtMintsLimited,
			m.agentSVIDExpiry, m.agentTokenExpiry, m.lastRotation, m.rotationFailures, m.reports)
	}
	return m
}

// setTime sets g to t in Unix seconds (0 for the zero time).
func setTime(g prometheus.Gauge, t time.Time) {
	if t.IsZero() {
		g.Set(0)
		return
	}
	g.Set(float64(t.UnixMilli()) / 1e3)
}
