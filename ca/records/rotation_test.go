package records

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/ca"
)

// fakeSlots is an authority whose slots the test sets; set publishes a new
// bundle as the authority does on every slot change.
type fakeSlots struct {
	mu    sync.Mutex
	slots []ca.SlotInfo
	ch    chan *spiffebundle.Bundle
}

func (f *fakeSlots) Slots() []ca.SlotInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.slots)
}

func (f *fakeSlots) SubscribeBundle() (<-chan *spiffebundle.Bundle, func()) { return f.ch, func() {} }

func (f *fakeSlots) set(slots ...ca.SlotInfo) {
	f.mu.Lock()
	f.slots = slots
	f.mu.Unlock()
	f.ch <- spiffebundle.New(spiffeid.RequireTrustDomainFromString("example.org"))
}

func TestRotations(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	slot := func(kind ca.Kind, id string, st ca.SlotStatus) ca.SlotInfo {
		return ca.SlotInfo{Kind: kind, ID: id, Status: st, NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}
	}
	auth := &fakeSlots{ch: make(chan *spiffebundle.Bundle), slots: []ca.SlotInfo{slot(ca.KindX509, "a1", ca.StatusActive), slot(ca.KindJWT, "j1", ca.StatusActive)}}
	rec := New(Config{Clock: clk})
	updates, stop := rec.Subscribe()
	defer stop()
	w := NewRotations(RotationsConfig{Authority: auth, Recorder: rec, Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	details := func(n int) []string {
		t.Helper()
		for rec.Stats().Events < n {
			select {
			case <-updates:
			case <-time.After(10 * time.Second):
				t.Fatalf("%d events, want %d", rec.Stats().Events, n)
			}
		}
		var out []string
		for _, e := range rec.List("", 0) {
			require.Equal(t, KindRotation, e.Kind)
			out = append(out, e.Detail+" "+e.KeyID)
		}
		slices.Reverse(out)
		return out
	}

	// The baseline is not recorded; a bundle without a slot change records nothing.
	auth.set(slot(ca.KindX509, "a1", ca.StatusActive), slot(ca.KindJWT, "j1", ca.StatusActive))
	auth.set(slot(ca.KindX509, "a1", ca.StatusActive), slot(ca.KindX509, "a2", ca.StatusPrepared), slot(ca.KindJWT, "j1", ca.StatusActive))
	require.Equal(t, []string{"x509 slot prepared a2"}, details(1))

	auth.set(slot(ca.KindX509, "a1", ca.StatusOld), slot(ca.KindX509, "a2", ca.StatusActive), slot(ca.KindJWT, "j1", ca.StatusActive))
	require.Equal(t, []string{"x509 slot prepared a2", "x509 slot retired a1", "x509 slot activated a2"}, details(3))

	// The authority publishes the same bundle again on a taint.
	tainted := slot(ca.KindX509, "a1", ca.StatusOld)
	tainted.Tainted = true
	auth.set(tainted, slot(ca.KindX509, "a2", ca.StatusActive), slot(ca.KindJWT, "j1", ca.StatusActive))
	require.Equal(t, "x509 slot tainted a1", details(4)[3])
	clk.Step(time.Minute)

	auth.set(slot(ca.KindX509, "a2", ca.StatusActive), slot(ca.KindJWT, "j1", ca.StatusActive))
	require.Equal(t, "x509 slot dropped a1", details(5)[4])
	last := rec.List("", 1)[0]
	require.True(t, last.NotAfter.Equal(t0.Add(24*time.Hour)))
	require.False(t, last.At.IsZero())

	cancel()
	require.NoError(t, <-done)
}
