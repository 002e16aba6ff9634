package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// jwtBatcher sends concurrent JWT-SVID requests to the server together.
// A request goes out at once when fewer than maxInFlight calls are
// running; while they run, new requests queue and leave together in the
// next call. So a lone request waits for nothing, and a burst costs a few
// round trips instead of one per request. Calls go out on the ctx of Run
// (each bounded by timeout), so none outlives its owner.
type jwtBatcher struct {
	mint        func(ctx context.Context, reqs []*tallyv1.NewJWTSVIDRequest) ([]*tallyv1.JWTSVIDResult, error)
	maxInFlight int
	maxBatch    int
	timeout     time.Duration

	mu       sync.Mutex
	ctx      context.Context // Run's; nil before Run
	stopped  bool            // Run's ctx is done: Do refuses
	queue    []*jwtCall
	inFlight int
	drains   sync.WaitGroup
}

type jwtCall struct {
	req  *tallyv1.NewJWTSVIDRequest
	done chan struct{}
	res  *tallyv1.JWTSVIDResult
	err  error
}

func newJWTBatcher(mint func(context.Context, []*tallyv1.NewJWTSVIDRequest) ([]*tallyv1.JWTSVIDResult, error)) *jwtBatcher {
	return &jwtBatcher{mint: mint, maxInFlight: 2, maxBatch: 500, timeout: 30 * time.Second}
}

// Run sends the queued requests on ctx until ctx is done, then waits for
// the calls in flight. Requests made before Run wait for it; those made
// after it ended fail.
func (b *jwtBatcher) Run(ctx context.Context) {
	b.mu.Lock()
	b.ctx = ctx
	for b.inFlight < min(b.maxInFlight, len(b.queue)) {
		b.startLocked()
	}
	b.mu.Unlock()
	<-ctx.Done()
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	b.drains.Wait()
}

func (b *jwtBatcher) startLocked() {
	b.inFlight++
	b.drains.Add(1)
	go b.drain(b.ctx)
}

// Do signs one JWT-SVID for entryID and audience.
func (b *jwtBatcher) Do(ctx context.Context, entryID string, audience []string) (string, time.Time, error) {
	c := &jwtCall{req: &tallyv1.NewJWTSVIDRequest{EntryId: entryID, Audience: audience}, done: make(chan struct{})}
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return "", time.Time{}, errors.New("agent: stopped; no JWT-SVIDs are minted")
	}
	b.queue = append(b.queue, c)
	if b.ctx != nil && b.inFlight < b.maxInFlight {
		b.startLocked()
	}
	b.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return "", time.Time{}, ctx.Err()
	}
	if c.err != nil {
		return "", time.Time{}, c.err
	}
	if c.res.GetError() != "" {
		return "", time.Time{}, fmt.Errorf("agent: server refused the JWT-SVID: %s", c.res.GetError())
	}
	return c.res.GetToken(), time.Unix(c.res.GetExpiresAt(), 0), nil
}

// drain sends queued requests on runCtx until the queue is empty.
func (b *jwtBatcher) drain(runCtx context.Context) {
	defer b.drains.Done()
	for {
		b.mu.Lock()
		n := min(len(b.queue), b.maxBatch)
		if n == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()

		reqs := make([]*tallyv1.NewJWTSVIDRequest, n)
		for i, c := range batch {
			reqs[i] = c.req
		}
		ctx, cancel := context.WithTimeout(runCtx, b.timeout)
		results, err := b.mint(ctx, reqs)
		cancel()
		if err == nil && len(results) != n {
			err = errors.New("agent: server answered a different number of JWT-SVID requests")
		}
		for i, c := range batch {
			if err != nil {
				c.err = err
			} else {
				c.res = results[i]
			}
			close(c.done)
		}
	}
}
