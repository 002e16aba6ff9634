package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/attest/k8s"
	"github.com/tallyid/tally/internal/logkey"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// Minter gets SVIDs signed: the server's Node API.
type Minter interface {
	NewX509SVIDs(ctx context.Context, reqs []*tallyv1.X509SVIDRequest) ([]*tallyv1.X509SVIDResult, error)
	NewJWTSVIDs(ctx context.Context, reqs []*tallyv1.NewJWTSVIDRequest) ([]*tallyv1.JWTSVIDResult, error)
}

// CacheConfig configures a Cache.
type CacheConfig struct {
	Minter  Minter
	Clock   clock.WithTicker
	Logger  *slog.Logger
	Metrics *Metrics
	// MaxUnused bounds the SVIDs kept for entries no subscriber needs (LRU).
	// Default 1000.
	MaxUnused int
	// BatchSize is the most CSRs per BatchNewX509SVID call. Default 500.
	BatchSize int
	// Parallel is how many mint calls may be in flight. Default 4.
	Parallel int
	// RetryAfter is how long an entry waits after a failed mint before it
	// is minted again; each further failure in a row doubles the wait, up
	// to 5 minutes (or RetryAfter, if longer), less up to a fifth of it as
	// jitter. Default 5s.
	RetryAfter time.Duration
	// JWTCacheSize bounds the JWT-SVIDs kept (LRU). Default
	// DefaultJWTCacheSize.
	JWTCacheSize int
	// JWTMintRate and JWTMintBurst bound, per SPIFFE ID, how fast workloads
	// can make the agent mint fresh JWT-SVIDs (cache misses): JWTMintRate
	// per second, JWTMintBurst at once. Beyond it FetchJWTSVIDs returns an
	// error wrapping workloadapi.ErrRateLimited; cached JWT-SVIDs are always
	// served. Defaults DefaultJWTMintRate, DefaultJWTMintBurst.
	JWTMintRate  float64
	JWTMintBurst int
	// TaintJitter bounds how soon an SVID signed by a key the server
	// reports tainted is renewed: at a random time within TaintJitter or a
	// tenth of the SVID's remaining life, whichever is shorter, so that a
	// taint spreads a node's renewals instead of minting them all at once.
	// Until the new SVID arrives the old one is served. Default
	// DefaultTaintJitter.
	TaintJitter time.Duration

	// rand is the source of the taint jitter, in [0, 1); tests fix it.
	rand func() float64
}

// maxRetryAfter caps the backoff of failed mints.
const maxRetryAfter = 5 * time.Minute

// Cache holds the entries this agent may issue, the trust bundle, and the
// workload SVIDs it minted. It mints on demand for connected workloads,
// renews their SVIDs at half their lifetime (with jitter) and pushes every
// change to subscribers. It implements workloadapi.Source. Safe for
// concurrent use; Run drives minting and rotation.
//
// It is a façade: entries (entrySet), SVIDs (svidStore) and subscribers
// (fanout) are guarded by mu; the mint scheduler and the JWT issuer lock
// themselves. Lock order: mu, then the scheduler's.
//
// The server names the tainted X.509 CA keys in the sync (syncUpdate.Tainted):
// every SVID held that one of them signed is renewed early (TaintJitter),
// and one no workload needs is dropped at once.
type Cache struct {
	cfg      CacheConfig
	syncedCh chan struct{}
	sched    *mintScheduler
	jwts     *jwtIssuer
	changes  chan struct{} // buffered(1): what served reports may have changed

	mu      sync.Mutex
	synced  bool
	entries *entrySet
	svids   *svidStore
	fan     *fanout
	bundle  *spiffebundle.Bundle
	tainted taintSet          // never nil
	lastErr map[string]string // entry ID → why its last mint failed, until one succeeds
}

// NewCache returns an empty cache; it serves once the first sync arrived.
func NewCache(cfg CacheConfig) *Cache {
	cfg = cacheDefaults(cfg)
	c := &Cache{
		cfg:      cfg,
		syncedCh: make(chan struct{}),
		jwts:     newJWTIssuer(cfg),
		entries:  newEntrySet(),
		svids:    newSVIDStore(cfg.MaxUnused),
		fan:      newFanout(),
		changes:  make(chan struct{}, 1),
		tainted:  taintSet{},
		lastErr:  map[string]string{},
	}
	x := &x509Minter{minter: cfg.Minter, bundle: c.Bundle, clock: cfg.Clock, log: cfg.Logger}
	c.sched = newMintScheduler(mintSchedulerConfig{
		Clock:      cfg.Clock,
		BatchSize:  cfg.BatchSize,
		Parallel:   cfg.Parallel,
		RetryAfter: cfg.RetryAfter,
		RetryMax:   maxRetryAfter,
		Mint:       x.mint,
		Done:       c.minted,
		Due:        c.due,
	})
	return c
}

func cacheDefaults(cfg CacheConfig) CacheConfig {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.MaxUnused == 0 {
		cfg.MaxUnused = 1000
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 500
	}
	if cfg.Parallel == 0 {
		cfg.Parallel = 4
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = 5 * time.Second
	}
	if cfg.JWTCacheSize == 0 {
		cfg.JWTCacheSize = DefaultJWTCacheSize
	}
	if cfg.JWTMintRate == 0 {
		cfg.JWTMintRate = DefaultJWTMintRate
	}
	if cfg.JWTMintBurst == 0 {
		cfg.JWTMintBurst = DefaultJWTMintBurst
	}
	if cfg.TaintJitter == 0 {
		cfg.TaintJitter = DefaultTaintJitter
	}
	return cfg
}

// syncUpdate is one complete sync step from the server.
type syncUpdate struct {
	Reset   bool
	Upserts []*entry
	Deleted []string
	Bundle  *spiffebundle.Bundle
	// Tainted, if not nil, replaces the set of tainted X.509 CA keys.
	Tainted taintSet
}

// Apply applies a sync step: entries, then bundle and tainted keys;
// subscribers whose identities changed get a new update. An entry that
// changed (a new revision) or is gone loses its SVID, its mint backoff and
// its last error.
func (c *Cache) Apply(u syncUpdate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := c.entries.apply(u)
	for id, e := range changed {
		c.svids.drop(id)
		c.sched.forget(id)
		delete(c.lastErr, id)
		if e != nil && forOnePod(e) {
			c.ensureLocked(id)
		}
	}
	if len(changed) > 0 {
		c.changedLocked()
	}
	if u.Bundle != nil {
		c.bundle = u.Bundle
		c.fan.sendBundle(u.Bundle)
		c.dropRevokedLocked(u.Bundle)
	}
	if u.Tainted != nil {
		c.taintLocked(u.Tainted)
	}
	if !c.synced {
		c.synced = true
		close(c.syncedCh)
	}
	var dirty []*subscription
	for sub := range c.fan.x509 {
		if c.rematchLocked(sub, changed) || u.Bundle != nil {
			dirty = append(dirty, sub)
		}
	}
	c.publishLocked(dirty)
}

// taintLocked replaces the tainted set. Each SVID held that a newly
// tainted key signed is renewed within the taint window if a workload
// needs it (it is served until then), or dropped if none does.
func (c *Cache) taintLocked(set taintSet) {
	newly := set.minus(c.tainted)
	c.tainted = set
	if len(newly) == 0 {
		return
	}
	now := c.cfg.Clock.Now()
	var renewed int
	var unused []string
	for id, s := range c.svids.all() {
		switch {
		case !newly.has(s.signer):
		case !c.svids.needed(id):
			unused = append(unused, id)
		default:
			c.renewTaintedLocked(id, s, now)
			renewed++
		}
	}
	for _, id := range unused {
		c.svids.drop(id)
	}
	if len(unused) > 0 {
		c.changedLocked()
	}
	c.cfg.Logger.Info("X.509 CA keys tainted: renewing the SVIDs they signed", "key_ids", slices.Sorted(maps.Keys(newly)),
		"renewing", renewed, "dropped_unused", len(unused), "within", c.cfg.TaintJitter)
}

// dropRevokedLocked handles a key that left bundle b (revoked): cached
// JWT-SVIDs it signed are dropped, and X509-SVIDs that no longer verify
// against b are renewed at once if a workload needs them (they verify
// nowhere, so there is nothing to wait for), dropped if none does.
func (c *Cache) dropRevokedLocked(b *spiffebundle.Bundle) {
	jwtDropped := c.jwts.cache.keepSignedBy(func(kid string) bool { _, ok := b.FindJWTAuthority(kid); return ok })
	now := c.cfg.Clock.Now()
	var renewed int
	var unused []string
	for id, s := range c.svids.all() {
		certs, err := x509.ParseCertificates(s.svid.CertChain)
		if err == nil {
			if _, _, err = x509svid.Verify(certs, b, x509svid.WithTime(now)); err == nil {
				continue
			}
		}
		if !c.svids.needed(id) {
			unused = append(unused, id)
			continue
		}
		s.renewAt = now
		c.sched.renewBy(id, now)
		renewed++
	}
	for _, id := range unused {
		c.svids.drop(id)
	}
	if len(unused) > 0 {
		c.changedLocked()
	}
	if renewed+len(unused)+jwtDropped > 0 {
		c.cfg.Logger.Info("SVIDs signed by a key no longer in the bundle (revoked): renewing them now",
			"x509_renewing", renewed, "x509_dropped_unused", len(unused), "jwt_dropped", jwtDropped)
	}
}

// renewTaintedLocked moves the renewal of entry id's SVID s, whose signer
// is tainted, to a random time within the taint window (taintRenewAt).
func (c *Cache) renewTaintedLocked(id string, s *cachedSVID, now time.Time) {
	at := taintRenewAt(now, s.svid.ExpiresAt, s.renewAt, c.cfg.TaintJitter, c.cfg.rand)
	if at.Before(s.renewAt) {
		s.renewAt = at
		c.sched.renewBy(id, at)
	}
}

// changedLocked tells the reporter that what the cache serves may have
// changed; it never blocks.
func (c *Cache) changedLocked() {
	select {
	case c.changes <- struct{}{}:
	default:
	}
}

// rematchLocked recomputes a subscriber's entries, acquiring the new ones
// and releasing the old, and asks for the SVIDs it lacks; it reports
// whether its identities may have changed.
func (c *Cache) rematchLocked(sub *subscription, changed map[string]*entry) bool {
	now := c.entries.match(sub.selectors, spiffeid.ID{})
	dirty := len(now) != len(sub.ids)
	for id := range now {
		_, had := sub.ids[id]
		_, ch := changed[id]
		dirty = dirty || !had || ch
	}
	if !dirty {
		return false
	}
	for id := range sub.ids {
		if _, still := now[id]; !still {
			c.releaseLocked(id)
		}
	}
	for id := range now {
		if _, had := sub.ids[id]; !had {
			c.svids.acquire(id)
		}
	}
	sub.ids = now
	for id := range now {
		c.ensureLocked(id)
	}
	return true
}

func (c *Cache) releaseLocked(id string) {
	if c.svids.release(id) {
		c.sched.cancel(id)
	}
}

// forOnePod reports whether e selects the containers of one pod (a
// k8s:pod-uid selector, as the registrar's entries have). Such an entry is
// minted as soon as it arrives, not when its workload first asks: the
// registrar writes it when the pod is scheduled, so the SVID is ready
// before the container starts. Unused, it is dropped at its renewal like
// any other.
func forOnePod(e *entry) bool {
	return slices.ContainsFunc(e.Selectors, func(s attest.Selector) bool {
		return s.Type == k8s.Type && strings.HasPrefix(s.Value, "pod-uid:")
	})
}

// ensureLocked asks for a mint if the entry has no SVID before its renewal.
func (c *Cache) ensureLocked(id string) {
	if c.svids.fresh(id, c.cfg.Clock.Now()) {
		return
	}
	if e := c.entries.get(id); e != nil {
		c.sched.request(e)
	}
}

// readyLocked reports whether entry id can be published: with its SVID,
// or without one if no mint is pending (it failed; the retry publishes).
func (c *Cache) readyLocked(id string) (*cachedSVID, bool) {
	if s := c.svids.get(id); s != nil {
		return s, true
	}
	return nil, !c.sched.pending(id)
}

// publishLocked is the one place that decides whether a subscriber gets
// an X.509 update: each of subs whose identities are all ready gets its
// full state. SVIDs are in entry creation order, so the default SVID (the
// first, which go-spiffe and Envoy use) is the one of the oldest entry and
// stays put.
func (c *Cache) publishLocked(subs []*subscription) {
	if c.bundle == nil {
		return
	}
next:
	for _, sub := range subs {
		upd := workloadapi.X509Update{Bundle: c.bundle}
		for _, id := range byCreation(sub.ids) {
			s, ready := c.readyLocked(id)
			if !ready {
				continue next // the mint's completion publishes
			}
			if s != nil {
				upd.SVIDs = append(upd.SVIDs, s.svid)
			}
		}
		if !sub.delivered {
			sub.delivered = true
			c.cfg.Metrics.firstSVID.Observe(c.cfg.Clock.Since(sub.started).Seconds())
		}
		c.fan.sendX509(sub, upd)
	}
}

// byCreation returns the IDs of entries, oldest entry first (then by ID).
func byCreation(entries map[string]*entry) []string {
	ids := make([]string, 0, len(entries))
	for id := range entries {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := entries[ids[i]], entries[ids[j]]
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.ID < b.ID
	})
	return ids
}

// minted is the scheduler's Done: it stores what a batch got, settles
// the batch in the scheduler and publishes to the subscribers holding it.
// An SVID signed by a tainted key (minted before the server heard of the
// taint) is renewed within the taint window, as if the taint came now.
func (c *Cache) minted(batch []*entry, out []*minted, errs []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	touched := make(map[string]bool, len(batch))
	now := c.cfg.Clock.Now()
	var tainted []string // entries that got an SVID of a tainted key
	for i, e := range batch {
		touched[e.ID] = true
		var m *minted
		if out != nil {
			m = out[i]
		}
		cur := c.entries.get(e.ID)
		if m == nil || cur == nil || !sameIdentity(cur, e) {
			c.cfg.Metrics.minted.WithLabelValues("x509", "error").Inc()
			if m == nil && cur != nil && sameIdentity(cur, e) && errs != nil && errs[i] != nil {
				c.cfg.Metrics.rotationFailures.WithLabelValues(svidWorkload).Inc()
				c.lastErr[e.ID] = errs[i].Error()
			}
			c.sched.settle(e.ID, m != nil || cur == nil, time.Time{})
			if m != nil && cur != nil {
				c.ensureLocked(e.ID) // the entry changed while in flight
			}
			continue
		}
		c.cfg.Metrics.minted.WithLabelValues("x509", "ok").Inc()
		setTime(c.cfg.Metrics.lastRotation, now)
		delete(c.lastErr, e.ID)
		s := &cachedSVID{svid: m.svid, renewAt: m.renewAt, svidInfo: m.svidInfo}
		if c.tainted.has(s.signer) {
			tainted = append(tainted, e.ID)
			s.renewAt = taintRenewAt(now, s.svid.ExpiresAt, s.renewAt, c.cfg.TaintJitter, c.cfg.rand)
		}
		if c.svids.put(e.ID, s) {
			c.cfg.Metrics.rotations.Inc()
		}
		c.sched.settle(e.ID, true, s.renewAt)
	}
	if len(tainted) > 0 {
		c.cfg.Logger.Warn("the server signed SVIDs with a tainted key; renewing them soon", "count", len(tainted), logkey.EntryID, tainted[0])
	}
	c.changedLocked()
	c.publishLocked(c.fan.holding(touched))
}

// due is the scheduler's Due: entries past their renewal are minted again
// if a workload needs them, or dropped (minted again if one comes back);
// an expired SVID is never served.
func (c *Cache) due(ids []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock.Now()
	for _, id := range ids {
		s := c.svids.get(id)
		if s != nil && now.Before(s.renewAt) {
			continue
		}
		if !c.svids.needed(id) {
			if s != nil {
				c.svids.drop(id)
				c.changedLocked()
			}
			continue
		}
		if s != nil && !now.Before(s.svid.ExpiresAt) {
			c.svids.drop(id)
			c.changedLocked()
		}
		if e := c.entries.get(id); e != nil {
			c.sched.request(e)
		}
	}
}

// waitSynced blocks until the first sync arrived.
func (c *Cache) waitSynced(ctx context.Context) error {
	select {
	case <-c.syncedCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent: entries not synced yet: %w", ctx.Err())
	}
}

// Synced reports whether the first sync arrived.
func (c *Cache) Synced() bool {
	select {
	case <-c.syncedCh:
		return true
	default:
		return false
	}
}

// SubscribeX509 implements workloadapi.Source.
func (c *Cache) SubscribeX509(ctx context.Context, selectors []attest.Selector) (workloadapi.Subscription, error) {
	if err := c.waitSynced(ctx); err != nil {
		return nil, err
	}
	sub := newSubscription(selectors, c.cfg.Clock.Now(), c.unsubscribe)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fan.addX509(sub)
	if c.rematchLocked(sub, nil) {
		c.changedLocked() // its entries have one subscriber more
	}
	c.publishLocked([]*subscription{sub})
	return sub, nil
}

func (c *Cache) unsubscribe(sub *subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fan.removeX509(sub)
	for id := range sub.ids {
		c.releaseLocked(id)
	}
	if len(sub.ids) > 0 {
		c.changedLocked()
	}
}

// SubscribeBundle implements workloadapi.Source.
func (c *Cache) SubscribeBundle() (<-chan *spiffebundle.Bundle, func()) {
	c.mu.Lock()
	ch := c.fan.addBundle(c.bundle)
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		c.fan.removeBundle(ch)
		c.mu.Unlock()
	}
}

// Bundle implements workloadapi.Source.
func (c *Cache) Bundle() *spiffebundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle == nil {
		return nil
	}
	return c.bundle.Clone()
}

// FetchJWTSVIDs implements workloadapi.Source: one JWT-SVID per identity
// of the caller (or only id), cached per (entry, SPIFFE ID, audience set)
// until half its lifetime, within an LRU of JWTCacheSize. A cache miss
// mints only if the identity's JWTMintRate/JWTMintBurst allows it;
// otherwise the error wraps workloadapi.ErrRateLimited.
func (c *Cache) FetchJWTSVIDs(ctx context.Context, selectors []attest.Selector, id spiffeid.ID, audience []string) ([]workloadapi.JWTSVID, error) {
	if err := c.waitSynced(ctx); err != nil {
		return nil, err
	}
	have := make(map[attest.Selector]struct{}, len(selectors))
	for _, s := range selectors {
		have[s] = struct{}{}
	}
	c.mu.Lock()
	matched := c.entries.match(have, id)
	c.mu.Unlock()
	entries := make([]*entry, 0, len(matched))
	for _, e := range matched {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
	out := make([]workloadapi.JWTSVID, 0, len(entries))
	for _, e := range entries {
		svid, err := c.jwts.get(ctx, e, audience)
		if err != nil {
			return nil, err
		}
		out = append(out, svid)
	}
	return out, nil
}

// Run mints and renews X509-SVIDs and sends JWT-SVID requests, all on
// ctx, until ctx is done; it returns once nothing it started runs.
func (c *Cache) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.jwts.run(ctx)
	}()
	err := c.sched.Run(ctx)
	wg.Wait()
	return err
}
