package health

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_test_total", Help: "t"}))
	var ready atomic.Bool
	h := Handler(ready.Load, reg)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	code, _ := get("/livez")
	require.Equal(t, http.StatusOK, code)
	code, _ = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	ready.Store(true)
	code, _ = get("/readyz")
	require.Equal(t, http.StatusOK, code)
	code, body := get("/metrics")
	require.Equal(t, http.StatusOK, code)
	require.True(t, strings.Contains(body, "tally_test_total 0"))
}

func TestHandlerHealthz(t *testing.T) {
	var ready atomic.Bool
	var reasons atomic.Pointer[[]string]
	h := NewHandler(Config{Ready: ready.Load, Metrics: prometheus.NewRegistry(), Degraded: func() []string {
		if r := reasons.Load(); r != nil {
			return *r
		}
		return nil
	}})
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	code, body := get()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not ready\n", body)
	ready.Store(true)
	code, body = get()
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	reasons.Store(&[]string{"agent SVID expired", "token expired"})
	code, body = get()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "degraded: agent SVID expired\ndegraded: token expired\n", body)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	require.Equal(t, http.StatusOK, rec.Code, "degraded is not unready: the process still serves")
}
