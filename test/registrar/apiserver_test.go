package registrar_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tallyid/tally/ca/store"
)

// The API server restarts under the registrar: it keeps running, loses no
// entry and leaves none behind, and follows the changes made after.
func TestAPIServerRestart(t *testing.T) {
	e := newEnv(t)
	e.start("prod", nil)
	e.identity("web", map[string]any{"spiffeIDTemplate": nsSATemplate})
	p1 := e.pod("p1", nil)
	before := e.eventually("prod", "p1's entry", func(m map[string]store.Entry) bool { return len(m) == 1 })

	e.c.RestartAPIServer(t)

	e.pod("p2", nil)
	e.c.DeletePod(t, p1)
	got := e.eventually("prod", "p2's entry, p1's gone", func(m map[string]store.Entry) bool {
		_, p1 := m["web "+e.ns+"/p1"]
		_, p2 := m["web "+e.ns+"/p2"]
		return !p1 && p2 && len(m) == 1
	})
	assert.NotEqual(t, before, got)
}

// Pods that come and go faster than the registrar reconciles (gone before
// their key is processed, or mid-reconcile) leave no entry behind.
func TestPodsGoneMidReconcile(t *testing.T) {
	e := newEnv(t)
	e.start("prod", nil)
	e.identity("web", map[string]any{"spiffeIDTemplate": "spiffe://example.org/web/{{ .PodMeta.Name }}"})
	for i := range 20 {
		p := e.pod(fmt.Sprintf("brief-%d", i), nil)
		e.c.DeletePod(t, p)
	}
	e.pod("stays", nil)
	e.eventually("prod", "only the pod that stays", func(m map[string]store.Entry) bool {
		_, ok := m["web "+e.ns+"/stays"]
		return ok && len(m) == 1
	})
}
