package agent

import (
	"container/list"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest"
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
	// RetryAfter is how long a failed entry waits before it is minted
	// again. Default 5s.
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
}

// Cache holds the entries this agent may issue, the trust bundle, and the
// workload SVIDs it minted. It mints on demand for connected workloads,
// renews their SVIDs at half their lifetime (with jitter) and pushes every
// change to subscribers. It implements workloadapi.Source. Safe for
// concurrent use; Run drives minting and rotation.
type Cache struct {
	cfg CacheConfig

	mu       sync.Mutex
	syncedCh chan struct{}
	synced   bool
	entries  map[string]*entry
	bySel    map[attest.Selector]map[string]*entry
	bundle   *spiffebundle.Bundle
	svids    map[string]*cachedSVID
	unused   *list.List // entry IDs with an SVID no subscriber needs; front = most recent
	subs     map[*subscription]struct{}
	need     map[string]int
	queue    []string
	queued   map[string]bool
	inflight map[string]bool
	failed   map[string]time.Time // entry ID → do not retry before
	wake     chan struct{}

	bundleSubs map[chan *spiffebundle.Bundle]struct{}

	jwts     *jwtCache
	jwtLimit *mintLimiter
	jwtGroup singleflight.Group
	jwtBatch *jwtBatcher
}

type cachedSVID struct {
	entry   *entry // the entry version it was minted for
	svid    workloadapi.X509SVID
	renewAt time.Time
	elem    *list.Element // in unused, when no subscriber needs it
}

// NewCache returns an empty cache; it serves once the first sync arrived.
func NewCache(cfg CacheConfig) *Cache {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
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
	return &Cache{
		cfg:        cfg,
		jwtBatch:   newJWTBatcher(cfg.Minter.NewJWTSVIDs),
		syncedCh:   make(chan struct{}),
		entries:    map[string]*entry{},
		bySel:      map[attest.Selector]map[string]*entry{},
		svids:      map[string]*cachedSVID{},
		unused:     list.New(),
		subs:       map[*subscription]struct{}{},
		need:       map[string]int{},
		queued:     map[string]bool{},
		inflight:   map[string]bool{},
		failed:     map[string]time.Time{},
		wake:       make(chan struct{}, 1),
		bundleSubs: map[chan *spiffebundle.Bundle]struct{}{},
		jwts:       newJWTCache(cfg.JWTCacheSize, cfg.Clock, cfg.Metrics),
		jwtLimit:   newMintLimiter(cfg.JWTMintRate, cfg.JWTMintBurst, mintLimiterIdentities, cfg.Clock),
	}
}

// syncUpdate is one complete sync step from the server.
type syncUpdate struct {
	Reset   bool
	Upserts []*entry
	Deleted []string
	Bundle  *spiffebundle.Bundle
}

// Apply applies a sync step: entries, then bundle; subscribers whose
// identities changed get a new update.
func (c *Cache) Apply(u syncUpdate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := map[string]bool{}
	if u.Reset {
		keep := make(map[string]bool, len(u.Upserts))
		for _, e := range u.Upserts {
			keep[e.ID] = true
		}
		for id := range c.entries {
			if !keep[id] {
				c.removeEntryLocked(id)
				changed[id] = true
			}
		}
	}
	for _, id := range u.Deleted {
		if _, ok := c.entries[id]; ok {
			c.removeEntryLocked(id)
			changed[id] = true
		}
	}
	for _, e := range u.Upserts {
		old := c.entries[e.ID]
		if old != nil && old.Revision == e.Revision {
			continue
		}
		if old != nil {
			c.removeEntryLocked(e.ID)
		}
		c.entries[e.ID] = e
		for _, s := range e.Selectors {
			m := c.bySel[s]
			if m == nil {
				m = map[string]*entry{}
				c.bySel[s] = m
			}
			m[e.ID] = e
		}
		if s := c.svids[e.ID]; s != nil && !sameIdentity(s.entry, e) {
			c.dropSVIDLocked(e.ID)
		}
		changed[e.ID] = true
	}
	bundleChanged := false
	if u.Bundle != nil {
		c.bundle = u.Bundle
		bundleChanged = true
		for ch := range c.bundleSubs {
			sendLatest(ch, u.Bundle.Clone())
		}
	}
	if !c.synced {
		c.synced = true
		close(c.syncedCh)
	}
	for sub := range c.subs {
		if c.rematchLocked(sub, changed) || bundleChanged {
			c.publishLocked(sub)
		}
	}
}

func (c *Cache) removeEntryLocked(id string) {
	e := c.entries[id]
	delete(c.entries, id)
	for _, s := range e.Selectors {
		delete(c.bySel[s], id)
		if len(c.bySel[s]) == 0 {
			delete(c.bySel, s)
		}
	}
	c.dropSVIDLocked(id)
	delete(c.failed, id)
}

func (c *Cache) dropSVIDLocked(id string) {
	if s := c.svids[id]; s != nil {
		if s.elem != nil {
			c.unused.Remove(s.elem)
		}
		delete(c.svids, id)
	}
}

// matchLocked returns the entries whose selectors are all in have.
func (c *Cache) matchLocked(have map[attest.Selector]struct{}) map[string]*entry {
	return c.matchIDLocked(have, spiffeid.ID{})
}

// matchIDLocked is matchLocked limited to entries of id (if not zero).
func (c *Cache) matchIDLocked(have map[attest.Selector]struct{}, id spiffeid.ID) map[string]*entry {
	out := map[string]*entry{}
	for s := range have {
		for eid, e := range c.bySel[s] {
			if !id.IsZero() && e.SPIFFEID != id {
				continue
			}
			if _, seen := out[eid]; !seen && e.matches(have) {
				out[eid] = e
			}
		}
	}
	return out
}

// rematchLocked recomputes a subscriber's entries; it reports whether its
// identities may have changed.
func (c *Cache) rematchLocked(sub *subscription, changed map[string]bool) bool {
	now := c.matchLocked(sub.selectors)
	dirty := len(now) != len(sub.ids)
	for id := range now {
		if _, had := sub.ids[id]; !had || changed[id] {
			dirty = true
		}
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
			c.acquireLocked(id)
		}
	}
	sub.ids = now
	for id := range now {
		c.ensureLocked(id)
	}
	return true
}

func (c *Cache) acquireLocked(id string) {
	c.need[id]++
	if s := c.svids[id]; s != nil && s.elem != nil {
		c.unused.Remove(s.elem)
		s.elem = nil
	}
}

func (c *Cache) releaseLocked(id string) {
	c.need[id]--
	if c.need[id] > 0 {
		return
	}
	delete(c.need, id)
	if s := c.svids[id]; s != nil {
		s.elem = c.unused.PushFront(id)
		for c.unused.Len() > c.cfg.MaxUnused {
			c.dropSVIDLocked(c.unused.Back().Value.(string))
		}
	}
}

// ensureLocked queues a mint if the entry has no usable SVID.
func (c *Cache) ensureLocked(id string) {
	s := c.svids[id]
	if s != nil && c.cfg.Clock.Now().Before(s.renewAt) {
		return
	}
	c.enqueueLocked(id)
}

func (c *Cache) enqueueLocked(id string) {
	if c.queued[id] || c.inflight[id] {
		return
	}
	if until, ok := c.failed[id]; ok && c.cfg.Clock.Now().Before(until) {
		return
	}
	c.queued[id] = true
	c.queue = append(c.queue, id)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// pendingLocked reports whether an entry without an SVID is being minted.
func (c *Cache) pendingLocked(id string) bool { return c.queued[id] || c.inflight[id] }

// publishLocked sends the subscriber its full state once every identity it
// has is ready (an SVID, or a failed mint to report without). SVIDs are in
// entry creation order, so the default SVID (the first, which go-spiffe and
// Envoy use) is the one of the oldest entry and stays put.
func (c *Cache) publishLocked(sub *subscription) {
	if c.bundle == nil {
		return
	}
	upd := workloadapi.X509Update{Bundle: c.bundle}
	ids := make([]string, 0, len(sub.ids))
	for id := range sub.ids {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := sub.ids[ids[i]], sub.ids[ids[j]]
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.ID < b.ID
	})
	for _, id := range ids {
		s := c.svids[id]
		if s == nil {
			if c.pendingLocked(id) {
				return // not ready; the mint's completion publishes
			}
			continue
		}
		upd.SVIDs = append(upd.SVIDs, s.svid)
	}
	if !sub.delivered {
		sub.delivered = true
		c.cfg.Metrics.firstSVID.Observe(c.cfg.Clock.Since(sub.started).Seconds())
	}
	sendLatest(sub.ch, upd)
}

// sendLatest replaces whatever ch holds with v; it never blocks.
func sendLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
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

type subscription struct {
	c         *Cache
	selectors map[attest.Selector]struct{}
	ids       map[string]*entry
	ch        chan workloadapi.X509Update
	started   time.Time
	delivered bool
	once      sync.Once
}

func (s *subscription) Updates() <-chan workloadapi.X509Update { return s.ch }

func (s *subscription) Close() {
	s.once.Do(func() {
		c := s.c
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.subs, s)
		for id := range s.ids {
			c.releaseLocked(id)
		}
	})
}

// SubscribeX509 implements workloadapi.Source.
func (c *Cache) SubscribeX509(ctx context.Context, selectors []attest.Selector) (workloadapi.Subscription, error) {
	if err := c.waitSynced(ctx); err != nil {
		return nil, err
	}
	sub := &subscription{
		c:         c,
		selectors: make(map[attest.Selector]struct{}, len(selectors)),
		ids:       map[string]*entry{},
		ch:        make(chan workloadapi.X509Update, 1),
		started:   c.cfg.Clock.Now(),
	}
	for _, s := range selectors {
		sub.selectors[s] = struct{}{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[sub] = struct{}{}
	c.rematchLocked(sub, nil)
	c.publishLocked(sub)
	return sub, nil
}

// SubscribeBundle implements workloadapi.Source.
func (c *Cache) SubscribeBundle() (<-chan *spiffebundle.Bundle, func()) {
	ch := make(chan *spiffebundle.Bundle, 1)
	c.mu.Lock()
	c.bundleSubs[ch] = struct{}{}
	if c.bundle != nil {
		ch <- c.bundle.Clone()
	}
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.bundleSubs, ch)
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
	matched := c.matchIDLocked(have, id)
	c.mu.Unlock()
	entries := make([]*entry, 0, len(matched))
	for _, e := range matched {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
	out := make([]workloadapi.JWTSVID, 0, len(entries))
	for _, e := range entries {
		svid, err := c.jwtFor(ctx, e, audience, jwtKey(e, audience))
		if err != nil {
			return nil, err
		}
		out = append(out, svid)
	}
	return out, nil
}

// jwtFor returns the cached JWT-SVID of key or mints one: concurrent
// misses of one key share one mint, which takes a token from the
// identity's rate limit first (spent even if the server then fails, so a
// failing server is not hammered either).
func (c *Cache) jwtFor(ctx context.Context, e *entry, audience []string, key string) (workloadapi.JWTSVID, error) {
	if svid, ok := c.jwts.get(key); ok {
		return svid, nil
	}
	v, err, _ := c.jwtGroup.Do(key, func() (any, error) {
		// A flight that just ended may have cached it.
		if svid, ok := c.jwts.get(key); ok {
			return svid, nil
		}
		if !c.jwtLimit.allow(e.SPIFFEID) {
			c.cfg.Metrics.jwtMintsLimited.Inc()
			return nil, fmt.Errorf("agent: fresh JWT-SVIDs for %s beyond %g/s (burst %d): %w",
				e.SPIFFEID, c.cfg.JWTMintRate, c.cfg.JWTMintBurst, workloadapi.ErrRateLimited)
		}
		token, exp, err := c.jwtBatch.Do(ctx, e.ID, audience)
		c.cfg.Metrics.minted.WithLabelValues("jwt", result(err)).Inc()
		if err != nil {
			return nil, err
		}
		svid := workloadapi.JWTSVID{ID: e.SPIFFEID, Token: token, Hint: e.Hint, ExpiresAt: exp}
		c.jwts.put(key, svid, c.cfg.Clock.Now())
		return svid, nil
	})
	if err != nil {
		return workloadapi.JWTSVID{}, err
	}
	return v.(workloadapi.JWTSVID), nil
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// Run mints queued SVIDs in batches and renews SVIDs at half their
// lifetime until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	tick := c.cfg.Clock.NewTicker(time.Second)
	defer tick.Stop()
	sem := make(chan struct{}, c.cfg.Parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-tick.C():
			c.rotate()
		}
		for {
			batch := c.takeBatch()
			if len(batch) == 0 {
				break
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				c.finish(batch, nil, ctx.Err())
				return nil
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c.mint(ctx, batch)
			}()
		}
	}
}

// rotate queues needed SVIDs past their renewal time and drops unneeded
// ones that are past it (they are minted again if a workload comes back).
func (c *Cache) rotate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock.Now()
	for id, s := range c.svids {
		if now.Before(s.renewAt) {
			continue
		}
		if c.need[id] == 0 {
			c.dropSVIDLocked(id)
			continue
		}
		if !now.Before(s.svid.ExpiresAt) {
			c.dropSVIDLocked(id) // never serve an expired SVID
		}
		c.enqueueLocked(id)
	}
	for id, until := range c.failed {
		if !now.Before(until) {
			delete(c.failed, id)
			if c.need[id] > 0 && c.svids[id] == nil {
				c.enqueueLocked(id)
			}
		}
	}
}

// takeBatch moves up to BatchSize queued entries that are still wanted to
// in flight.
func (c *Cache) takeBatch() []*entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var batch []*entry
	for len(c.queue) > 0 && len(batch) < c.cfg.BatchSize {
		id := c.queue[0]
		c.queue = c.queue[1:]
		delete(c.queued, id)
		e := c.entries[id]
		if e == nil || c.need[id] == 0 {
			continue
		}
		c.inflight[id] = true
		batch = append(batch, e)
	}
	return batch
}

type minted struct {
	svid    workloadapi.X509SVID
	renewAt time.Time
}

// mint generates a key and CSR per entry and asks the server to sign them.
func (c *Cache) mint(ctx context.Context, batch []*entry) {
	reqs := make([]*tallyv1.X509SVIDRequest, 0, len(batch))
	keys := make([][]byte, 0, len(batch))
	for _, e := range batch {
		csr, key, err := newCSR(e)
		if err != nil {
			c.finish(batch, nil, err)
			return
		}
		reqs = append(reqs, &tallyv1.X509SVIDRequest{EntryId: e.ID, Csr: csr})
		keys = append(keys, key)
	}
	results, err := c.cfg.Minter.NewX509SVIDs(ctx, reqs)
	if err == nil && len(results) != len(batch) {
		err = fmt.Errorf("agent: server answered %d of %d CSRs", len(results), len(batch))
	}
	if err != nil {
		c.finish(batch, nil, err)
		return
	}
	out := make([]*minted, len(batch))
	for i, r := range results {
		if r.GetError() != "" {
			c.cfg.Logger.Warn("server refused an SVID", "entry_id", batch[i].ID, "spiffe_id", batch[i].SPIFFEID.String(), "error", r.GetError())
			continue
		}
		m, err := c.newMinted(batch[i], r.GetCertChain(), keys[i])
		if err != nil {
			c.cfg.Logger.Warn("bad SVID from server", "entry_id", batch[i].ID, "error", err)
			continue
		}
		out[i] = m
	}
	c.finish(batch, out, nil)
}

func (c *Cache) newMinted(e *entry, chain [][]byte, key []byte) (*minted, error) {
	if len(chain) == 0 {
		return nil, errors.New("empty chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, err
	}
	var der []byte
	for _, c := range chain {
		der = append(der, c...)
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	jitter := time.Duration(0)
	if n, err := rand.Int(rand.Reader, big.NewInt(int64(life/10)+1)); err == nil {
		jitter = time.Duration(n.Int64())
	}
	return &minted{
		svid:    workloadapi.X509SVID{ID: e.SPIFFEID, CertChain: der, Key: key, Hint: e.Hint, ExpiresAt: leaf.NotAfter},
		renewAt: leaf.NotBefore.Add(life / 2).Add(jitter),
	}, nil
}

// finish records a batch's outcome and publishes to its subscribers.
func (c *Cache) finish(batch []*entry, out []*minted, err error) {
	if err != nil {
		c.cfg.Logger.Warn("minting SVIDs", "count", len(batch), "error", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock.Now()
	touched := map[string]bool{}
	for i, e := range batch {
		delete(c.inflight, e.ID)
		touched[e.ID] = true
		var m *minted
		if out != nil {
			m = out[i]
		}
		cur := c.entries[e.ID]
		if m == nil || cur == nil || !sameIdentity(cur, e) {
			c.cfg.Metrics.minted.WithLabelValues("x509", "error").Inc()
			if m == nil {
				c.failed[e.ID] = now.Add(c.cfg.RetryAfter)
			} else if cur != nil {
				c.ensureLocked(e.ID) // the entry changed while in flight
			}
			continue
		}
		c.cfg.Metrics.minted.WithLabelValues("x509", "ok").Inc()
		delete(c.failed, e.ID)
		old := c.svids[e.ID]
		s := &cachedSVID{entry: e, svid: m.svid, renewAt: m.renewAt}
		if old != nil {
			c.cfg.Metrics.rotations.Inc()
			if old.elem != nil {
				c.unused.Remove(old.elem)
			}
		}
		c.svids[e.ID] = s
		if c.need[e.ID] == 0 {
			s.elem = c.unused.PushFront(e.ID)
			for c.unused.Len() > c.cfg.MaxUnused {
				c.dropSVIDLocked(c.unused.Back().Value.(string))
			}
		}
	}
	for sub := range c.subs {
		for id := range sub.ids {
			if touched[id] {
				c.publishLocked(sub)
				break
			}
		}
	}
}

// newCSR makes a P-256 key on this node and a CSR for the entry's ID and DNS
// names; it returns the CSR and the PKCS#8 key.
func newCSR(e *entry) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(e.SPIFFEID.String())
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: e.DNSNames}, key)
	if err != nil {
		return nil, nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	return csr, pkcs8, err
}
