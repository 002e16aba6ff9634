package agent

import (
	"context"
	"fmt"

	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/workloadapi"
)

// jwtIssuer serves JWT-SVIDs: from its cache while they are fresh,
// otherwise minted through the batcher, within each identity's rate of
// fresh mints. Safe for concurrent use; run drives the batcher.
type jwtIssuer struct {
	clock   clock.PassiveClock
	metrics *Metrics
	rate    float64 // for the error text
	burst   int

	cache *jwtCache
	limit *mintLimiter
	group singleflight.Group
	batch *jwtBatcher
}

func newJWTIssuer(cfg CacheConfig) *jwtIssuer {
	return &jwtIssuer{
		clock:   cfg.Clock,
		metrics: cfg.Metrics,
		rate:    cfg.JWTMintRate,
		burst:   cfg.JWTMintBurst,
		cache:   newJWTCache(cfg.JWTCacheSize, cfg.Clock, cfg.Metrics),
		limit:   newMintLimiter(cfg.JWTMintRate, cfg.JWTMintBurst, mintLimiterIdentities, cfg.Clock),
		batch:   newJWTBatcher(cfg.Minter.NewJWTSVIDs),
	}
}

// run sends JWT-SVID requests to the server until ctx is done, on ctx.
func (j *jwtIssuer) run(ctx context.Context) { j.batch.Run(ctx) }

// get returns the cached JWT-SVID of entry e for audience or mints one:
// concurrent misses of one key share one mint, which takes a token from
// the identity's rate limit first (spent even if the server then fails, so
// a failing server is not hammered either).
func (j *jwtIssuer) get(ctx context.Context, e *entry, audience []string) (workloadapi.JWTSVID, error) {
	key := jwtKey(e, audience)
	if svid, ok := j.cache.get(key); ok {
		return svid, nil
	}
	v, err, _ := j.group.Do(key, func() (any, error) {
		// A flight that just ended may have cached it.
		if svid, ok := j.cache.get(key); ok {
			return svid, nil
		}
		if !j.limit.allow(e.SPIFFEID) {
			j.metrics.jwtMintsLimited.Inc()
			return nil, fmt.Errorf("agent: fresh JWT-SVIDs for %s beyond %g/s (burst %d): %w",
				e.SPIFFEID, j.rate, j.burst, workloadapi.ErrRateLimited)
		}
		token, exp, err := j.batch.Do(ctx, e.ID, audience)
		j.metrics.minted.WithLabelValues("jwt", result(err)).Inc()
		if err != nil {
			return nil, err
		}
		svid := workloadapi.JWTSVID{ID: e.SPIFFEID, Token: token, Hint: e.Hint, ExpiresAt: exp}
		j.cache.put(key, svid, j.clock.Now())
		return svid, nil
	})
	if err != nil {
		return workloadapi.JWTSVID{}, err
	}
	return v.(workloadapi.JWTSVID), nil
}

// len is the number of JWT-SVIDs cached.
func (j *jwtIssuer) len() int { return j.cache.len() }

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
