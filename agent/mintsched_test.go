package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clocktesting "k8s.io/utils/clock/testing"
)

// idle reports whether nothing is queued or in flight and Run has taken
// every wake-up; with a fake clock that has waiters, Run then waits for
// its timer.
func (s *mintScheduler) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.states {
		if st.phase != phaseIdle {
			return false
		}
	}
	return len(s.wake) == 0
}

// schedHarness runs a scheduler on a fake clock whose Mint reports each
// batch and answers with mint (nil: success, renewing after renewIn), and
// whose Due re-requests the entry, as the Cache does.
type schedHarness struct {
	s       *mintScheduler
	clk     *clocktesting.FakeClock
	batches chan []string
	dues    chan []string
	fail    func(id string) bool
	renewIn map[string]time.Duration
	entries map[string]*entry
}

// startSched runs the scheduler after before (if not nil) ran.
func startSched(t *testing.T, batchSize, parallel int, fail func(string) bool, renewIn map[string]time.Duration, before func(*schedHarness)) *schedHarness {
	h := &schedHarness{clk: clocktesting.NewFakeClock(time.Now()), batches: make(chan []string, 100), dues: make(chan []string, 100),
		fail: fail, renewIn: renewIn, entries: map[string]*entry{}}
	h.s = newMintScheduler(mintSchedulerConfig{
		Clock: h.clk, BatchSize: batchSize, Parallel: parallel, RetryAfter: time.Second, RetryMax: 4 * time.Second,
		rand: func() float64 { return 0 },
		Mint: func(_ context.Context, batch []*entry) ([]*minted, []error) {
			out := make([]*minted, len(batch))
			var ids []string
			for i, e := range batch {
				ids = append(ids, e.ID)
				if h.fail == nil || !h.fail(e.ID) {
					out[i] = &minted{renewAt: h.clk.Now().Add(h.renewIn[e.ID])}
				}
			}
			h.batches <- ids
			return out, nil
		},
		Done: func(batch []*entry, out []*minted, _ []error) {
			for i, e := range batch {
				if out == nil || out[i] == nil {
					h.s.settle(e.ID, false, time.Time{})
				} else {
					h.s.settle(e.ID, true, out[i].renewAt)
				}
			}
		},
		Due: func(ids []string) {
			h.dues <- ids
			for _, id := range ids {
				h.s.request(h.entries[id])
			}
		},
	})
	for id := range renewIn {
		h.entries[id] = testEntry(id, "spiffe://example.org/"+id, 1, "uid:1")
	}
	if before != nil {
		before(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// settled waits until the scheduler waits for its timer (or for work, if
// it has no timer) with nothing queued or in flight.
func (h *schedHarness) settled(t *testing.T, timers int) {
	t.Helper()
	require.Eventually(t, func() bool { return h.s.idle() && h.clk.Waiters() == timers }, 10*time.Second, time.Millisecond)
}

func recv(t *testing.T, ch chan []string) []string {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received")
		return nil
	}
}

func requireNone(t *testing.T, ch chan []string, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s: got %v", what, v)
	default:
	}
}

func TestMintSchedulerBatchesAndBoundsParallel(t *testing.T) {
	renew := map[string]time.Duration{}
	for i := range 5 {
		renew[fmt.Sprint(i)] = time.Hour
	}
	h := startSched(t, 2, 1, nil, renew, func(h *schedHarness) {
		for i := range 5 {
			h.s.request(h.entries[fmt.Sprint(i)])
			h.s.request(h.entries[fmt.Sprint(i)]) // queued already: no second mint
		}
	})
	var got []string
	for len(got) < 5 {
		b := recv(t, h.batches)
		require.LessOrEqual(t, len(b), 2, "BatchSize")
		got = append(got, b...)
	}
	require.ElementsMatch(t, []string{"0", "1", "2", "3", "4"}, got)
	h.settled(t, 1)
	requireNone(t, h.batches, "each entry is minted once")
	for id := range renew {
		require.False(t, h.s.pending(id))
	}
}

func TestMintSchedulerOneTimerAtTheEarliestRenewal(t *testing.T) {
	h := startSched(t, 10, 1, nil, map[string]time.Duration{"a": 10 * time.Minute, "b": 15 * time.Minute}, nil)
	h.s.request(h.entries["a"])
	h.s.request(h.entries["b"])
	got := recv(t, h.batches)
	if len(got) == 1 {
		got = append(got, recv(t, h.batches)...)
	}
	require.ElementsMatch(t, []string{"a", "b"}, got)
	h.settled(t, 1) // one timer for both, no ticker

	h.clk.Step(10*time.Minute - time.Nanosecond)
	h.settled(t, 1)
	requireNone(t, h.dues, "before a's renewal")
	h.clk.Step(time.Nanosecond)
	require.Equal(t, []string{"a"}, recv(t, h.dues))
	require.Equal(t, []string{"a"}, recv(t, h.batches))
	h.settled(t, 1)

	h.clk.Step(5 * time.Minute) // b's renewal; a's next is 5 min later
	require.Equal(t, []string{"b"}, recv(t, h.dues))
	require.Equal(t, []string{"b"}, recv(t, h.batches))
	h.settled(t, 1)
	requireNone(t, h.dues, "a is not due yet")
}

func TestMintSchedulerBacksOffExponentially(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	h := startSched(t, 10, 1, func(string) bool { return failing.Load() }, map[string]time.Duration{"a": time.Hour}, nil)
	h.s.request(h.entries["a"])
	recv(t, h.batches)
	for _, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		h.settled(t, 1)
		h.s.request(h.entries["a"]) // a workload asking does not skip the backoff
		h.clk.Step(wait - time.Millisecond)
		h.settled(t, 1)
		requireNone(t, h.batches, fmt.Sprintf("retried before %v", wait))
		h.clk.Step(time.Millisecond)
		require.Equal(t, []string{"a"}, recv(t, h.dues))
		require.Equal(t, []string{"a"}, recv(t, h.batches))
	}
	h.settled(t, 1)
	failing.Store(false)
	h.clk.Step(4 * time.Second)
	recv(t, h.batches) // succeeds: the backoff resets
	h.settled(t, 1)
	failing.Store(true)
	h.clk.Step(time.Hour) // renewal, which fails
	recv(t, h.batches)
	h.settled(t, 1)
	h.clk.Step(time.Second)
	require.Equal(t, []string{"a"}, recv(t, h.batches), "the first retry waits RetryAfter again")
}

func TestMintSchedulerCancelAndForget(t *testing.T) {
	h := startSched(t, 10, 1, func(string) bool { return true }, map[string]time.Duration{"a": time.Hour, "b": time.Hour}, nil)
	h.s.request(h.entries["a"])
	recv(t, h.batches)
	h.settled(t, 1)
	require.False(t, h.s.pending("a"))

	h.s.request(h.entries["a"])
	require.False(t, h.s.pending("a"), "in backoff: the request waits for the retry")
	h.s.forget("a") // the entry changed
	h.s.request(h.entries["a"])
	require.Equal(t, []string{"a"}, recv(t, h.batches), "a changed entry is minted at once")
	h.settled(t, 1)
}

func TestMintSchedulerCancelDropsQueued(t *testing.T) {
	s := newMintScheduler(mintSchedulerConfig{Clock: clocktesting.NewFakeClock(time.Now()), BatchSize: 10, Parallel: 1})
	a, b := testEntry("a", "spiffe://example.org/a", 1), testEntry("b", "spiffe://example.org/b", 1)
	s.request(a)
	s.request(b)
	a2 := testEntry("a", "spiffe://example.org/a", 2)
	s.request(a2)
	s.cancel("b")
	require.False(t, s.pending("b"))
	require.True(t, s.pending("a"))
	require.Equal(t, []*entry{a2}, s.takeBatch(), "queued once, at the newest version")
	require.True(t, s.pending("a"), "in flight")
	s.cancel("a")
	require.True(t, s.pending("a"), "a mint in flight goes on")
	s.settle("a", true, time.Time{})
	require.False(t, s.pending("a"))
	require.Empty(t, s.states, "nothing is kept for an entry with no timer")
}

func TestMintSchedulerStopsWithItsContext(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	started := make(chan struct{})
	var sawErr error
	var s *mintScheduler
	s = newMintScheduler(mintSchedulerConfig{Clock: clk, BatchSize: 10, Parallel: 1, RetryAfter: time.Second,
		Mint: func(ctx context.Context, batch []*entry) ([]*minted, []error) {
			close(started)
			<-ctx.Done()
			sawErr = ctx.Err()
			return make([]*minted, len(batch)), nil
		},
		Done: func(batch []*entry, _ []*minted, _ []error) {
			for _, e := range batch {
				s.settle(e.ID, false, time.Time{})
			}
		},
		Due: func([]string) {},
	})
	s.request(testEntry("a", "spiffe://example.org/a", 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	<-started
	cancel()
	require.NoError(t, <-done)
	require.ErrorIs(t, sawErr, context.Canceled, "Run returned after the mint in flight, which ran on its ctx")
	require.False(t, s.pending("a"))
}
