package agent

import (
	"container/heap"
	"container/list"
	"context"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/backoff"
)

// mintScheduler decides when each entry's X509-SVID is minted: it queues
// requests, sends them in batches with a bounded number in flight, and
// keeps one timer, armed at the earliest renewal or retry time of all
// entries. A failed mint is retried after an exponential backoff with
// jitter, reset by a success. It holds the one answer to "is a mint of
// this entry pending?". Safe for concurrent use; Run drives it.
type mintScheduler struct {
	cfg  mintSchedulerConfig
	wake chan struct{}

	mu     sync.Mutex
	states map[string]*mintState
	queue  *list.List // of entry IDs in phase queued, oldest first
	timers timerHeap  // may hold stale items: see mintState.at
}

type mintSchedulerConfig struct {
	Clock     clock.Clock
	BatchSize int // most entries per Mint call (> 0)
	Parallel  int // most Mint calls at once (> 0)
	// RetryAfter is the wait after a first failure; each further one
	// doubles it, up to RetryMax, less up to a fifth at random (jitter).
	RetryAfter, RetryMax time.Duration
	// Mint signs a batch: one result per entry, nil where it failed, with
	// the error in errs.
	Mint func(ctx context.Context, batch []*entry) (out []*minted, errs []error)
	// Done receives each batch's results (both nil if ctx ended before the
	// batch was sent). It must call settle for every entry of batch, under
	// the same lock as its calls to pending, so that no reader sees an
	// entry neither pending nor served.
	Done func(batch []*entry, out []*minted, errs []error)
	// Due is called with the entries whose renewal or retry time came.
	Due func(ids []string)
	// rand is the backoff's jitter source (backoff.Backoff.Rand); tests
	// fix it.
	rand func() float64
}

type mintPhase int

const (
	phaseIdle mintPhase = iota
	phaseQueued
	phaseInFlight
)

type mintState struct {
	e       *entry // the version to mint, while queued
	phase   mintPhase
	elem    *list.Element    // in queue, while queued
	at      time.Time        // the renewal or retry time, zero if none
	retry   bool             // at is a retry time: no mint before it
	retries *backoff.Backoff // since the last success; nil if none failed
}

func newMintScheduler(cfg mintSchedulerConfig) *mintScheduler {
	return &mintScheduler{cfg: cfg, wake: make(chan struct{}, 1), states: map[string]*mintState{}, queue: list.New()}
}

// request queues a mint of e unless one is queued (then e replaces the
// version to mint) or in flight, or e's retry time has not come.
func (s *mintScheduler) request(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state(e.ID)
	switch {
	case st.phase == phaseQueued:
		st.e = e
		return
	case st.phase == phaseInFlight:
		return
	case st.retry && s.cfg.Clock.Now().Before(st.at):
		return
	}
	st.e, st.phase, st.elem = e, phaseQueued, s.queue.PushBack(e.ID)
	s.signal()
}

// cancel takes entry id out of the queue; a mint in flight goes on.
func (s *mintScheduler) cancel(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.states[id]; st != nil && st.phase == phaseQueued {
		s.unqueue(st)
		s.tidy(id, st)
	}
}

// forget cancels entry id and drops its timer and failures (the entry
// changed or is gone).
func (s *mintScheduler) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.states[id]; st != nil {
		if st.phase == phaseQueued {
			s.unqueue(st)
		}
		st.at, st.retry, st.retries = time.Time{}, false, nil
		s.tidy(id, st)
	}
}

// pending reports whether a mint of entry id is queued or in flight.
func (s *mintScheduler) pending(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.states[id]
	return st != nil && st.phase != phaseIdle
}

// settle ends entry id's mint in flight: with a renewal time if it was
// served (minted), a retry after backoff if it failed (!ok), or neither
// (ok and a zero renewAt: the result was of no use, e.g. the entry
// changed meanwhile).
func (s *mintScheduler) settle(id string, ok bool, renewAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state(id)
	st.phase, st.e = phaseIdle, nil
	switch {
	case !ok:
		if st.retries == nil {
			st.retries = &backoff.Backoff{Min: s.cfg.RetryAfter, Max: max(s.cfg.RetryMax, s.cfg.RetryAfter), Jitter: 0.2, Rand: s.cfg.rand}
		}
		s.arm(id, st, s.cfg.Clock.Now().Add(st.retries.Next()), true)
	case !renewAt.IsZero():
		st.retries = nil
		s.arm(id, st, renewAt, false)
	default:
		st.at, st.retry = time.Time{}, false
	}
	s.tidy(id, st)
	s.signal()
}

// renewBy moves entry id's renewal time to at if that is sooner (a
// tainted signing key). An entry queued, in flight or waiting for a retry
// is left alone: the mint it waits for replaces its SVID anyway.
func (s *mintScheduler) renewBy(id string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state(id)
	if st.phase == phaseIdle && !st.retry && (st.at.IsZero() || at.Before(st.at)) {
		s.arm(id, st, at, false)
		s.signal()
	}
	s.tidy(id, st)
}

// Run mints queued entries and calls Due when timers come, until ctx is
// done; then it waits for the mints in flight (whose ctx is done too).
func (s *mintScheduler) Run(ctx context.Context) error {
	sem := make(chan struct{}, s.cfg.Parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		if ids := s.takeDue(); len(ids) > 0 {
			s.cfg.Due(ids)
		}
		if !s.dispatch(ctx, sem, &wg) {
			return nil
		}
		var timer clock.Timer
		var fire <-chan time.Time
		if at, ok := s.next(); ok {
			d := at.Sub(s.cfg.Clock.Now())
			if d <= 0 {
				continue
			}
			timer = s.cfg.Clock.NewTimer(d)
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// dispatch starts a Mint call per batch queued, at most Parallel at once.
// It returns false if ctx ended while it waited; the batch it held is then
// done without results.
func (s *mintScheduler) dispatch(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup) bool {
	for {
		batch := s.takeBatch()
		if len(batch) == 0 {
			return true
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			s.cfg.Done(batch, nil, nil)
			return false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, errs := s.cfg.Mint(ctx, batch)
			s.cfg.Done(batch, out, errs)
		}()
	}
}

// takeBatch moves up to BatchSize queued entries to in flight.
func (s *mintScheduler) takeBatch() []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var batch []*entry
	for s.queue.Len() > 0 && len(batch) < s.cfg.BatchSize {
		st := s.states[s.queue.Front().Value.(string)]
		s.unqueue(st)
		st.phase = phaseInFlight
		batch = append(batch, st.e)
	}
	return batch
}

// takeDue clears the timers that came and returns their entries.
func (s *mintScheduler) takeDue() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Clock.Now()
	var ids []string
	for len(s.timers) > 0 && !s.timers[0].at.After(now) {
		t := heap.Pop(&s.timers).(timerItem)
		st := s.states[t.id]
		if st == nil || !st.at.Equal(t.at) {
			continue // stale: the entry's time changed since
		}
		st.at, st.retry = time.Time{}, false
		s.tidy(t.id, st)
		ids = append(ids, t.id)
	}
	return ids
}

// next is the earliest timer, if any.
func (s *mintScheduler) next() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.timers) > 0 {
		t := s.timers[0]
		if st := s.states[t.id]; st != nil && st.at.Equal(t.at) {
			return t.at, true
		}
		heap.Pop(&s.timers)
	}
	return time.Time{}, false
}

func (s *mintScheduler) state(id string) *mintState {
	st := s.states[id]
	if st == nil {
		st = &mintState{}
		s.states[id] = st
	}
	return st
}

func (s *mintScheduler) arm(id string, st *mintState, at time.Time, retry bool) {
	st.at, st.retry = at, retry
	heap.Push(&s.timers, timerItem{at: at, id: id})
}

func (s *mintScheduler) unqueue(st *mintState) {
	s.queue.Remove(st.elem)
	st.elem, st.phase = nil, phaseIdle
}

// tidy drops a state that holds nothing.
func (s *mintScheduler) tidy(id string, st *mintState) {
	if st.phase == phaseIdle && st.at.IsZero() && st.retries == nil {
		delete(s.states, id)
	}
}

func (s *mintScheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

type timerItem struct {
	at time.Time
	id string
}

// timerHeap is a min-heap of timers by time (container/heap).
type timerHeap []timerItem

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timerItem)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}
