package k8spsat

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// DefaultNodeCacheTTL is how long a node read from the apiserver is reused
// when Config.NodeCacheTTL is 0.
const DefaultNodeCacheTTL = 30 * time.Second

// maxCachedNodes bounds the node cache. Only nodes that bound pods of
// authenticated tokens run on get in, so this is far more than a cluster
// has (5,000 nodes is the supported maximum).
const maxCachedNodes = 20000

// cachedNode is what an attestation needs of a node object.
type cachedNode struct {
	uid     string
	labels  map[string]string // only the configured label keys
	fetched time.Time
}

// nodeCache remembers nodes by name for ttl. It is safe for concurrent use.
//
// A cached node is only ever used for a token bound to the same node uid
// (see Attestor.node): the token names the node incarnation it was issued
// on, so a node deleted and recreated under the same name is read again. A
// node deleted within the ttl can still be served; its pods are deleted with
// it (pod garbage collection), and every attestation reads its pod afresh
// and refuses a pod that is terminating or gone.
type nodeCache struct {
	ttl   time.Duration
	clock clock.PassiveClock

	mu    sync.Mutex
	nodes map[string]cachedNode
}

func newNodeCache(ttl time.Duration, clk clock.PassiveClock) *nodeCache {
	return &nodeCache{ttl: ttl, clock: clk, nodes: make(map[string]cachedNode)}
}

// get returns the node name if it was fetched less than ttl ago.
func (c *nodeCache) get(name string) (cachedNode, bool) {
	if c.ttl <= 0 {
		return cachedNode{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[name]
	if !ok {
		return cachedNode{}, false
	}
	if c.clock.Since(n.fetched) >= c.ttl {
		delete(c.nodes, name)
		return cachedNode{}, false
	}
	return n, true
}

// put stores n, fetched now, under name. When the cache is full it first
// drops every expired node; if none expired, n is not stored.
func (c *nodeCache) put(name string, n cachedNode) {
	if c.ttl <= 0 {
		return
	}
	n.fetched = c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.nodes[name]; !ok && len(c.nodes) >= maxCachedNodes {
		for k, v := range c.nodes {
			if n.fetched.Sub(v.fetched) >= c.ttl {
				delete(c.nodes, k)
			}
		}
		if len(c.nodes) >= maxCachedNodes {
			return
		}
	}
	c.nodes[name] = n
}

// forget drops name: the apiserver said it does not exist.
func (c *nodeCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, name)
}
