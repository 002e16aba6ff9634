package registrar

import (
	"context"

	"github.com/tallyid/tally/ca/store"
)

// maxBatch bounds how many reconciles' writes go in one store write.
const maxBatch = 256

// batcher is a group commit: the writes of reconciles that arrive while a
// store write is in flight wait, and go together in the next one. Each
// reconcile still makes one write of its own keys (its entries are its
// pod's, disjoint from any other pod's), but 10,000 pods need far fewer
// synced commits than 10,000.
type batcher struct {
	entries Entries
	reqs    chan *writeReq
}

type writeReq struct {
	w    store.EntryWrites
	done chan writeResult
}

type writeResult struct {
	out store.EntryWrites
	err error
}

func newBatcher(entries Entries) *batcher {
	return &batcher{entries: entries, reqs: make(chan *writeReq)}
}

// write hands w to the batcher and waits for its result.
func (b *batcher) write(ctx context.Context, w store.EntryWrites) (store.EntryWrites, error) {
	r := &writeReq{w: w, done: make(chan writeResult, 1)}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return store.EntryWrites{}, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.out, res.err
	case <-ctx.Done():
		return store.EntryWrites{}, ctx.Err()
	}
}

// run writes batches until ctx ends.
func (b *batcher) run(ctx context.Context) {
	for {
		var batch []*writeReq
		select {
		case <-ctx.Done():
			return
		case r := <-b.reqs:
			batch = append(batch, r)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		b.flush(ctx, batch)
	}
}

// flush writes batch in one store write; if that fails, each on its own,
// so that one refused write (an entry made by hand meanwhile) does not
// fail the others.
func (b *batcher) flush(ctx context.Context, batch []*writeReq) {
	if len(batch) > 1 {
		var all store.EntryWrites
		for _, r := range batch {
			all.Delete = append(all.Delete, r.w.Delete...)
			all.Update = append(all.Update, r.w.Update...)
			all.Create = append(all.Create, r.w.Create...)
		}
		if out, err := b.entries.WriteEntries(ctx, all); err == nil {
			for _, r := range batch {
				var mine store.EntryWrites
				mine.Delete = r.w.Delete
				mine.Update, out.Update = out.Update[:len(r.w.Update):len(r.w.Update)], out.Update[len(r.w.Update):]
				mine.Create, out.Create = out.Create[:len(r.w.Create):len(r.w.Create)], out.Create[len(r.w.Create):]
				r.done <- writeResult{out: mine}
			}
			return
		}
	}
	for _, r := range batch {
		out, err := b.entries.WriteEntries(ctx, r.w)
		r.done <- writeResult{out: out, err: err}
	}
}
