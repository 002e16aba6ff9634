package registrar_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/registrar"
)

// Two replicas with a Lease: one writes; when it stops, the other takes
// over and keeps the entries current.
func TestLeaderElection(t *testing.T) {
	e := newEnv(t)
	e.identity("web", map[string]any{"spiffeIDTemplate": nsSATemplate})
	e.pod("p1", nil)
	lease := func(id string) *registrar.LeaderElection {
		return &registrar.LeaderElection{Namespace: e.ns, Name: "tally-registrar", Identity: id,
			LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond}
	}
	m1, stop1 := e.stoppable("prod", lease("server-0"))
	e.eventually("prod", "the entry", func(m map[string]store.Entry) bool { return len(m) == 1 })
	m2 := e.start("prod", lease("server-1"))
	leader := func() (float64, float64) {
		return testutil.ToFloat64(metricNamed(t, m1, "tally_registrar_leader")), testutil.ToFloat64(metricNamed(t, m2, "tally_registrar_leader"))
	}
	l1, l2 := leader()
	assert.Equal(t, []float64{1, 0}, []float64{l1, l2}, "one leader")

	stop1()
	eventually(t, "server-1 to lead", func() bool { _, l2 := leader(); return l2 == 1 })
	e.pod("p2", nil)
	e.eventually("prod", "the new leader's entry", func(m map[string]store.Entry) bool { return len(m) == 2 })
}
