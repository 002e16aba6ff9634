package agent

import (
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Defaults of the fresh JWT-SVID rate limit, per SPIFFE ID.
const (
	DefaultJWTMintRate  = 10.0 // per second
	DefaultJWTMintBurst = 50
	// mintLimiterIdentities bounds the limiters kept (LRU, about 100 bytes
	// each). An identity whose limiter was dropped starts again with a full
	// burst, so a workload gains from it only with more identities than
	// this, each an entry an administrator registered for it.
	mintLimiterIdentities = 10_000
)

// mintLimiter bounds how fast each identity can make the agent mint fresh
// JWT-SVIDs (a cache miss, so a signing by the server): a token bucket per
// SPIFFE ID, of burst tokens refilled at perSecond, read on the injected
// clock.
//
// The key is the SPIFFE ID being minted, not the connection, PID or uid:
// it is what the caller was attested as, a workload cannot get a new one
// by reconnecting or forking, and its number is bounded by the entries an
// administrator registered. Every process of one identity shares its
// bucket. Safe for concurrent use.
type mintLimiter struct {
	clock clock.PassiveClock
	limit rate.Limit
	burst int

	mu       sync.Mutex
	limiters *lru[spiffeid.ID, *rate.Limiter]
}

// newMintLimiter returns a limiter of perSecond (> 0) fresh mints per
// identity with bursts of burst (> 0), keeping the limiters of at most
// identities (> 0) SPIFFE IDs.
func newMintLimiter(perSecond float64, burst, identities int, clk clock.PassiveClock) *mintLimiter {
	return &mintLimiter{
		clock:    clk,
		limit:    rate.Limit(perSecond),
		burst:    burst,
		limiters: newLRU[spiffeid.ID, *rate.Limiter](identities),
	}
}

// allow takes one token from id's bucket and reports whether there was
// one. A refused call takes nothing.
func (l *mintLimiter) allow(id spiffeid.ID) bool {
	now := l.clock.Now()
	l.mu.Lock()
	lim, ok := l.limiters.get(id)
	if !ok {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.limiters.add(id, lim)
	}
	l.mu.Unlock()
	return lim.AllowN(now, 1)
}

// identities is the number of SPIFFE IDs with a limiter.
func (l *mintLimiter) identities() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limiters.len()
}
