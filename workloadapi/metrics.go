package workloadapi

import "github.com/prometheus/client_golang/prometheus"

// Values of the type label of tally_agent_svids_served_total.
const (
	svidX509 = "x509"
	svidJWT  = "jwt"
)

// Values of the result label of tally_agent_attestations_total.
const (
	attestOK          = "ok"           // selectors found, caller still the process that connected
	attestDenied      = "denied"       // the attestor refused, or found no selectors
	attestProcessGone = "process_gone" // the caller's process exited or its PID was reused
	attestError       = "error"        // the attestor failed
)

// Metrics counts Workload API activity. Its methods are safe for concurrent
// use; a nil *Metrics counts nothing.
type Metrics struct {
	streams      prometheus.Gauge
	served       *prometheus.CounterVec
	attestations *prometheus.CounterVec
}

// NewMetrics creates the Workload API metrics and registers them with reg
// (nil: not registered):
//
//	tally_agent_workload_connections           gauge: open streaming calls
//	tally_agent_svids_served_total{type}       SVIDs sent to workloads: x509 (per stream message), jwt
//	tally_agent_attestations_total{result}     ok, denied, process_gone, error
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_agent_workload_connections",
			Help: "Open Workload API streams.",
		}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_agent_svids_served_total",
			Help: "SVIDs sent to workloads, by type (x509, jwt); an X.509 stream counts every SVID of every message.",
		}, []string{"type"}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_agent_attestations_total",
			Help: "Workload attestations, by result (ok, denied, process_gone, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.served, m.attestations)
	}
	return m
}

// streamOpened counts an open stream until the returned func is called.
func (m *Metrics) streamOpened() (closed func()) {
	if m == nil {
		return func() {}
	}
	m.streams.Inc()
	return m.streams.Dec
}

func (m *Metrics) svidsServed(typ string, n int) {
	if m != nil {
		m.served.WithLabelValues(typ).Add(float64(n))
	}
}

func (m *Metrics) attested(result string) {
	if m != nil {
		m.attestations.WithLabelValues(result).Inc()
	}
}
