package api

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyid/tally/ca"
)

// Metrics counts and times issuance.
type Metrics struct {
	issued  *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// NewMetrics registers the issuance metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_server_svids_issued_total",
			Help: "SVIDs signed, by type (x509, jwt) and result (ok, error).",
		}, []string{"type", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tally_server_svid_sign_duration_seconds",
			Help:    "Time to sign one SVID, by type.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}, []string{"type"}),
	}
	if reg != nil {
		reg.MustRegister(m.issued, m.latency)
	}
	return m
}

func (m *Metrics) observe(typ string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.issued.WithLabelValues(typ, result).Inc()
	m.latency.WithLabelValues(typ).Observe(time.Since(start).Seconds())
}

func signX509(ctx context.Context, a Authority, m *Metrics, p ca.X509SVIDParams) ([]*x509.Certificate, error) {
	start := time.Now()
	chain, err := a.SignX509SVID(ctx, p)
	m.observe("x509", start, err)
	return chain, err
}

func signJWT(ctx context.Context, a Authority, m *Metrics, issuer string, p ca.JWTSVIDParams) (string, time.Time, error) {
	start := time.Now()
	if issuer != "" {
		p.Claims = map[string]any{"iss": issuer}
	}
	token, exp, err := a.SignJWTSVID(ctx, p)
	m.observe("jwt", start, err)
	return token, exp, err
}
