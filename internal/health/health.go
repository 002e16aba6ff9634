// Package health is the plain-HTTP endpoint both binaries serve:
// /livez, /readyz, /healthz and /metrics.
package health

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures NewHandler.
type Config struct {
	// Ready reports whether the process serves (/readyz).
	Ready func() bool
	// Degraded, if set, returns why the process is degraded (/healthz):
	// it still serves, but is heading for a failure it cannot recover from
	// on its own. None when healthy.
	Degraded func() []string
	// Metrics is served on /metrics.
	Metrics *prometheus.Registry
}

// Handler is NewHandler without Degraded.
func Handler(ready func() bool, reg *prometheus.Registry) http.Handler {
	return NewHandler(Config{Ready: ready, Metrics: reg})
}

// NewHandler answers /livez with 200 while the process serves, /readyz
// with 200 once Ready() is true (503 before), /healthz with 200 "ok" while
// Ready() is true and Degraded() returns nothing, otherwise 503 with a
// line per reason ("not ready", "degraded: ..."), and /metrics with the
// registry's metrics. /healthz is for people and alerts, not a liveness
// probe: a degraded process is not helped by a restart.
func NewHandler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !cfg.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		var problems []string
		if !cfg.Ready() {
			problems = append(problems, "not ready")
		}
		if cfg.Degraded != nil {
			for _, why := range cfg.Degraded() {
				problems = append(problems, "degraded: "+why)
			}
		}
		if len(problems) > 0 {
			http.Error(w, strings.Join(problems, "\n"), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}))
	return mux
}
