package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// followEntries keeps one SyncEntries stream open: a snapshot first, then
// only changes; after a failure it reconnects with capped backoff and
// resumes from the last revision it applied. There is no periodic reload.
//
// The server names the tainted X.509 CA keys (tainted_x509_ids) in every
// message that carries a bundle and whenever they change: a message with a
// bundle or with tainted IDs replaces the set the cache and keepIdentity
// act on; one with neither leaves it. (An empty list cannot be told from
// an absent one, so a set that empties without a bundle change is not
// seen; a tainted key only leaves the set by being revoked, which changes
// the bundle.)
func (s *Session) followEntries(ctx context.Context, cache *Cache) error {
	var rev, bundleSeq uint64
	bo := backoff.New(500*time.Millisecond, 30*time.Second)
	for {
		node, changed := s.conn.Node()
		err := s.syncOnce(ctx, cache, node, changed, &rev, &bundleSeq, bo)
		if ctx.Err() != nil {
			return nil
		}
		s.cfg.Metrics.reconnects.Inc()
		select {
		case <-changed: // a new connection: resume at once
			continue
		default:
		}
		d := bo.Next()
		s.log.Warn("entry sync interrupted; serving from cache", logkey.Error, err, logkey.Revision, rev, logkey.RetryIn, d)
		if s.sleep(ctx, d) != nil {
			return nil
		}
	}
}

func (s *Session) syncOnce(ctx context.Context, cache *Cache, node tallyv1.NodeClient, changed <-chan struct{}, rev, bundleSeq *uint64, bo *backoff.Backoff) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-changed:
			cancel()
		case <-ctx.Done():
		}
	}()
	stream, err := node.SyncEntries(ctx, &tallyv1.SyncEntriesRequest{SinceRevision: *rev, BundleSequence: *bundleSeq})
	if err != nil {
		return err
	}
	var pending *syncUpdate
	first := true
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		if pending == nil || m.GetSnapshot() {
			pending = &syncUpdate{Reset: m.GetSnapshot()}
		}
		for _, p := range m.GetUpserts() {
			e, err := entryFromProto(p)
			if err != nil {
				return fmt.Errorf("agent: entry %s from server: %w", p.GetId(), err)
			}
			pending.Upserts = append(pending.Upserts, e)
		}
		pending.Deleted = append(pending.Deleted, m.GetDeletedIds()...)
		if raw := m.GetBundle(); len(raw) > 0 {
			b, err := spiffebundle.Parse(s.cfg.TrustDomain, raw)
			if err != nil {
				return fmt.Errorf("agent: bundle from server: %w", err)
			}
			pending.Bundle = b
		}
		if len(m.GetBundle()) > 0 || len(m.GetTaintedX509Ids()) > 0 {
			pending.Tainted = newTaintSet(m.GetTaintedX509Ids())
		}
		if m.GetMore() {
			continue
		}
		cache.Apply(*pending)
		s.log.Debug("entry sync applied", "snapshot", pending.Reset, logkey.Revision, m.GetRevision(),
			"upserts", len(pending.Upserts), "deleted", len(pending.Deleted), "bundle", pending.Bundle != nil, "tainted", len(pending.Tainted))
		if pending.Bundle != nil {
			if err := s.id.setBundle(pending.Bundle); err != nil {
				s.log.Warn("keeping the bundle", logkey.Error, err)
			}
			seq, _ := pending.Bundle.SequenceNumber()
			*bundleSeq = seq
		}
		if pending.Tainted != nil {
			s.setTainted(pending.Tainted) // after the bundle, which may be needed to find the agent SVID's signer
		}
		if first {
			first = false
			s.streamApplied()
		}
		*rev = m.GetRevision()
		pending = nil
		bo.Reset()
		s.cfg.Metrics.syncUpdates.Inc()
		if at := m.GetChangedAtUnixNano(); at > 0 {
			s.cfg.Metrics.syncLag.Observe(max(s.cfg.Clock.Since(time.Unix(0, at)).Seconds(), 0))
		}
	}
}
