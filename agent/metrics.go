package agent

import (
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
}

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
	}
	if reg != nil {
		reg.MustRegister(m.rotations, m.minted, m.firstSVID, m.syncLag, m.syncUpdates, m.reconnects, m.attestations,
			m.jwtCacheEntries, m.jwtCacheEvictions, m.jwtMintsLimited)
	}
	return m
}
