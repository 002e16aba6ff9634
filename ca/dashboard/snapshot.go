package dashboard

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"
)

// keepSnapshots is how many snapshots the handler keeps to serve deltas
// from: a page that fell further behind gets the full overview.
const keepSnapshots = 4

// gzipAbove is the size from which a body is gzipped.
const gzipAbove = 4 << 10

// wkey identifies a workload row: an entry's identity served by one agent.
type wkey struct{ agent, entry, id string }

func keyOf(w *Workload) wkey { return wkey{w.AgentID, w.EntryID, w.SPIFFEID} }

// snapshot is the Source's overview at one moment, as the page shows it,
// encoded at most once in full and once per base snapshot as a delta,
// whatever the number of viewers. Safe for concurrent use.
type snapshot struct {
	id, gen uint64
	at      time.Time
	o       Overview
	order   []int32 // o.Workloads' indices in the page's order
	buckets []Bucket
	hashes  map[wkey]uint64 // of each workload's content

	mu     sync.Mutex
	full   *body
	deltas map[uint64]*body // by base snapshot
}

// body is an encoded overview, and its gzipped form if it is large.
type body struct{ raw, gz []byte }

var hashSeed = maphash.MakeSeed()

func newSnapshot(id, gen uint64, now time.Time, o Overview, buckets []Bucket) *snapshot {
	// The Source's Overview is not to be modified, and its workloads are
	// large to move: sort their indices.
	order := make([]int32, len(o.Workloads))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return pageOrder(&o.Workloads[a], &o.Workloads[b]) })
	s := &snapshot{id: id, gen: gen, at: now, o: o, order: order, buckets: buckets,
		hashes: make(map[wkey]uint64, len(o.Workloads)), deltas: map[uint64]*body{}}
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for i := range o.Workloads {
		w := &o.Workloads[i]
		h.Reset()
		hashWorkload(&h, w)
		s.hashes[keyOf(w)] = h.Sum64()
	}
	return s
}

// pageOrder is the workload table's default order: at risk first, then
// failing renewals, then by SPIFFE ID.
func pageOrder(a, b *Workload) int {
	if ar, br := len(a.AtRisk) > 0, len(b.AtRisk) > 0; ar != br {
		if ar {
			return -1
		}
		return 1
	}
	if ae, be := a.LastError != "", b.LastError != ""; ae != be {
		if ae {
			return -1
		}
		return 1
	}
	return cmp.Or(cmp.Compare(a.SPIFFEID, b.SPIFFEID), cmp.Compare(a.AgentID, b.AgentID), cmp.Compare(a.EntryID, b.EntryID))
}

func hashWorkload(h *maphash.Hash, w *Workload) {
	for _, s := range [...]string{w.SPIFFEID, w.EntryID, w.AgentID, w.Node, w.Namespace, w.Pod, w.Serial, w.SignerID, w.LastError} {
		_, _ = h.WriteString(s)
		_ = h.WriteByte(0)
	}
	var n [8]byte
	for _, v := range [...]int64{unix(w.NotBefore), unix(w.NotAfter), int64(w.Renewals), int64(w.Subscribers)} {
		binary.LittleEndian.PutUint64(n[:], uint64(v))
		_, _ = h.Write(n[:])
	}
	for _, r := range w.AtRisk {
		_, _ = h.WriteString(r)
		_ = h.WriteByte(1)
	}
}

// fullBody returns the whole overview.
func (s *snapshot) fullBody() (*body, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full == nil {
		raw, err := encodeFull(s.id, s.gen, s.at, &s.o, s.order, s.buckets)
		if err != nil {
			return nil, fmt.Errorf("dashboard: encode the overview: %w", err)
		}
		if s.full, err = compress(raw); err != nil {
			return nil, err
		}
	}
	return s.full, nil
}

// deltaBody returns what changed since base.
func (s *snapshot) deltaBody(base *snapshot) (*body, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.deltas[base.id]; b != nil {
		return b, nil
	}
	var changed []*Workload
	for _, i := range s.order {
		w := &s.o.Workloads[i]
		k := keyOf(w)
		if h, ok := base.hashes[k]; !ok || h != s.hashes[k] {
			changed = append(changed, w)
		}
	}
	var removed [][3]string
	for k := range base.hashes {
		if _, ok := s.hashes[k]; !ok {
			removed = append(removed, [3]string{k.agent, k.entry, k.id})
		}
	}
	raw, err := encodeDelta(s.id, base.id, s.gen, s.at, &s.o, s.buckets, changed, removed)
	if err != nil {
		return nil, fmt.Errorf("dashboard: encode the overview: %w", err)
	}
	b, err := compress(raw)
	if err != nil {
		return nil, err
	}
	s.deltas[base.id] = b
	return b, nil
}

func compress(raw []byte) (*body, error) {
	b := &body{raw: raw}
	if len(raw) < gzipAbove {
		return b, nil
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	_, _ = zw.Write(raw)
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("dashboard: gzip the overview: %w", err)
	}
	b.gz = gz.Bytes()
	return b, nil
}

// snapshot returns the current snapshot: the last one, unless a generation
// has started since or it is older than Refresh (Run is not running); then
// a new one, from the Source.
func (h *Handler) snapshot() *snapshot {
	h.encMu.Lock()
	defer h.encMu.Unlock()
	gen := h.generation()
	now := h.cfg.Clock.Now()
	if n := len(h.snaps); n > 0 {
		if s := h.snaps[n-1]; s.gen == gen && now.Sub(s.at) < h.cfg.Refresh {
			return s
		}
	}
	h.lastSnap++
	s := newSnapshot(h.lastSnap, gen, now, h.cfg.Source.Overview(now), h.cfg.Source.Buckets(now.Add(-h.cfg.ChartWindow)))
	h.snaps = append(h.snaps, s)
	if len(h.snaps) > keepSnapshots {
		h.snaps = slices.Delete(h.snaps, 0, len(h.snaps)-keepSnapshots)
	}
	return s
}

// kept returns the kept snapshot id, or nil.
func (h *Handler) kept(id uint64) *snapshot {
	h.encMu.Lock()
	defer h.encMu.Unlock()
	for _, s := range h.snaps {
		if s.id == id {
			return s
		}
	}
	return nil
}
