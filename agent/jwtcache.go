package agent

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tallyid/tally/workloadapi"
)

// DefaultJWTCacheSize is how many JWT-SVIDs the agent keeps by default, as
// SPIRE's agent does.
const DefaultJWTCacheSize = 1000

// jwtCache keeps the JWT-SVIDs the agent minted, each until half its
// lifetime, in an LRU of a fixed size: however many audiences workloads ask
// for, it never holds more than size tokens, and making room costs O(1).
// Safe for concurrent use.
type jwtCache struct {
	clock   clock.PassiveClock
	metrics *Metrics

	mu     sync.Mutex
	tokens *lru[string, cachedJWT]
}

type cachedJWT struct {
	svid      workloadapi.JWTSVID
	refreshAt time.Time
	kid       string // the signing key, to drop the token when the key leaves the bundle
}

// newJWTCache returns an empty cache of at most size (> 0) JWT-SVIDs.
func newJWTCache(size int, clk clock.PassiveClock, m *Metrics) *jwtCache {
	m.jwtCacheEntries.Set(0)
	return &jwtCache{clock: clk, metrics: m, tokens: newLRU[string, cachedJWT](size)}
}

// jwtKey names the JWT-SVID of entry e for audience, whatever the order
// of audience. It holds the entry ID (the hint and TTL are the entry's) and
// the SPIFFE ID (an entry whose SPIFFE ID changed never gets the old
// token); every part is length-prefixed, so that no two requests share a key
// unless they would get the same token.
func jwtKey(e *entry, audience []string) string {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	var b strings.Builder
	for _, s := range append([]string{e.ID, e.SPIFFEID.String()}, aud...) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}

// get returns the JWT-SVID cached for key if it is not yet half way
// through its lifetime, and makes it the most recently used. An older one
// is dropped and reported as missing, so that the caller mints a new one.
func (c *jwtCache) get(key string) (workloadapi.JWTSVID, bool) {
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	hit, ok := c.tokens.get(key)
	if !ok {
		return workloadapi.JWTSVID{}, false
	}
	if !now.Before(hit.refreshAt) {
		c.tokens.remove(key)
		c.metrics.jwtCacheEntries.Set(float64(c.tokens.len()))
		return workloadapi.JWTSVID{}, false
	}
	return hit.svid, true
}

// put caches svid for key until half of its lifetime from issued, dropping
// the least recently used JWT-SVID if the cache is full.
func (c *jwtCache) put(key string, svid workloadapi.JWTSVID, issued time.Time) {
	v := cachedJWT{svid: svid, refreshAt: issued.Add(svid.ExpiresAt.Sub(issued) / 2), kid: jwtKeyID(svid.Token)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens.add(key, v) {
		c.metrics.jwtCacheEvictions.Inc()
	}
	c.metrics.jwtCacheEntries.Set(float64(c.tokens.len()))
}

// keepSignedBy drops every cached JWT-SVID whose signing key keep refuses
// (one that left the bundle: revoked), so that workloads get tokens that
// verify at once instead of at the next refresh.
func (c *jwtCache) keepSignedBy(keep func(kid string) bool) (dropped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gone []string
	for key, v := range c.tokens.all() {
		if !keep(v.kid) {
			gone = append(gone, key)
		}
	}
	for _, key := range gone {
		c.tokens.remove(key)
	}
	c.metrics.jwtCacheEntries.Set(float64(c.tokens.len()))
	return len(gone)
}

// jwtKeyID is the kid of a compact JWS header ("" if unreadable: such a
// token is dropped at the next bundle change).
func jwtKeyID(token string) string {
	header, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		return ""
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if json.Unmarshal(raw, &h) != nil {
		return ""
	}
	return h.Kid
}

// len is the number of cached JWT-SVIDs, fresh or not yet dropped.
func (c *jwtCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tokens.len()
}
