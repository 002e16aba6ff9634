package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/attest"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
	"github.com/tallyid/tally/workloadapi"
)

// Exchanger forwards the token exchanges of a Cache's workloads to the
// server's Node API (ExchangeToken) over a Session's current connection; it
// implements workloadapi.Exchanger. Each identity may forward exchanges as
// fast as it may mint fresh JWT-SVIDs (CacheConfig.JWTMintRate and
// JWTMintBurst), from a budget of its own. Safe for concurrent use.
type Exchanger struct {
	cache *Cache
	conn  *serverConn
	limit *mintLimiter
}

// NewExchanger returns the Exchanger of cache's identities over session's
// connection.
func NewExchanger(cache *Cache, session *Session) *Exchanger {
	cfg := cache.cfg
	return &Exchanger{cache: cache, conn: session.conn,
		limit: newMintLimiter(cfg.JWTMintRate, cfg.JWTMintBurst, mintLimiterIdentities, cfg.Clock)}
}

// Identities implements workloadapi.Exchanger: the identities of the
// entries matching selectors, oldest entry first (the order of the
// X509-SVIDs the Cache publishes). It waits for the first sync.
func (x *Exchanger) Identities(ctx context.Context, selectors []attest.Selector) ([]workloadapi.Identity, error) {
	c := x.cache
	if err := c.waitSynced(ctx); err != nil {
		return nil, err
	}
	have := make(map[attest.Selector]struct{}, len(selectors))
	for _, s := range selectors {
		have[s] = struct{}{}
	}
	c.mu.Lock()
	matched := c.entries.match(have, spiffeid.ID{})
	c.mu.Unlock()
	out := make([]workloadapi.Identity, 0, len(matched))
	for _, id := range byCreation(matched) {
		out = append(out, workloadapi.Identity{EntryID: id, ID: matched[id].SPIFFEID})
	}
	return out, nil
}

// ExchangeToken implements workloadapi.Exchanger: Node.ExchangeToken for
// id's entry, within id's rate (beyond it the error wraps
// workloadapi.ErrRateLimited). The server's refusal is its status error,
// unwrapped.
func (x *Exchanger) ExchangeToken(ctx context.Context, id workloadapi.Identity, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error) {
	if !x.limit.allow(id.ID) {
		return nil, fmt.Errorf("agent: token exchanges for %s beyond %g/s (burst %d): %w",
			id.ID, x.cache.cfg.JWTMintRate, x.cache.cfg.JWTMintBurst, workloadapi.ErrRateLimited)
	}
	return x.conn.exchangeToken(ctx, id.EntryID, req)
}

// exchangeToken forwards an exchange for entry entryID to the server.
func (s *serverConn) exchangeToken(ctx context.Context, entryID string, req *tallyv1.ExchangeRequest) (*tallyv1.ExchangeResponse, error) {
	node, _ := s.Node()
	if node == nil {
		return nil, errors.New("agent: not connected")
	}
	return node.ExchangeToken(ctx, &tallyv1.ExchangeTokenRequest{EntryId: entryID, Exchange: req})
}
