package registrar

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registrar's, one per reconcile phase: the queue, render,
// write, and the time from a pod's event to its entry written.
type metrics struct {
	queue        queueDepth
	render       prometheus.Histogram
	write        prometheus.Histogram
	eventToEntry prometheus.Histogram
	reconciles   *prometheus.CounterVec
	entries      prometheus.Gauge
	leader       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	buckets := prometheus.ExponentialBuckets(0.0001, 4, 10) // 100 µs … 26 s
	m := &metrics{
		render: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_registrar_render_seconds",
			Help: "Time to render the entries of one pod or ClusterStaticEntry.", Buckets: buckets}),
		write: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_registrar_write_seconds",
			Help: "Time of the one write of a reconcile that changed entries.", Buckets: buckets}),
		eventToEntry: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_registrar_event_to_entry_seconds",
			Help: "Time from a pod or resource event to its entries written (queue wait, retries and write included).", Buckets: buckets}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_registrar_reconciles_total",
			Help: "Reconciles of a pod or ClusterStaticEntry, by result: written, unchanged, error."}, []string{"result"}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_registrar_entries",
			Help: "Entries the registrar keeps for its cluster."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_registrar_leader",
			Help: "1 while this server is the registrar that writes (it holds the Lease, or there is no election)."}),
	}
	for _, r := range []string{"written", "unchanged", "error"} {
		m.reconciles.WithLabelValues(r)
	}
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tally_registrar_queue_depth",
		Help: "Pods and resources waiting to be reconciled."}, m.queue.get)
	for _, c := range []prometheus.Collector{m.render, m.write, m.eventToEntry, m.reconciles, m.entries, m.leader, depth} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// queueDepth reads the length of the current term's queue, 0 between terms.
type queueDepth struct {
	mu  sync.Mutex
	len func() int
}

func (q *queueDepth) set(f func() int) {
	q.mu.Lock()
	q.len = f
	q.mu.Unlock()
}

func (q *queueDepth) get() float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.len == nil {
		return 0
	}
	return float64(q.len())
}
