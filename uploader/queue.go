package uploader

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/metrics"
)

// category sorts queued keys by how they can be sent.
type category int

const (
	catSmall  category = iota // a write that may ride in a bulk request
	catLarge                  // a write that is streamed alone
	catDelete                 // the key should not exist
)

// item is one key's pending intent.
type item struct {
	st desired.State
	// passes are the full syncs waiting for this key's outcome.
	passes []*pass
	// attempts counts immediate retries (unsuccessful_keys, a file that
	// changed while it was sent).
	attempts int
	// split caps the pairs of a bulk request holding this key after a bulk
	// request was refused as a whole; 1 means streamed alone.
	split int
	// expect, for a full sync's deletion, is the record seen when the
	// deletion was planned: if the key was written since, it is not deleted.
	expect *state.Record
	// remote: a full sync's deletion of a key only its listing says this
	// sync wrote (the store has no record of it).
	remote bool
	// force: a full sync's listing showed the key does not hold this
	// state, whatever the store says; the worker writes it.
	force     bool
	cat       category
	taken     bool
	notBefore time.Time
}

// offer queues st, or settles it at once when it needs no request. mu is
// held; it is released while waiting for room in the queue. A nil ctx waits
// until room is made or the engine closes.
func (e *Engine) offer(ctx context.Context, st desired.State, p *pass) error {
	key := st.Key
	if st.Err != nil {
		if p != nil && p.remote != nil {
			e.claim(p, key)
		}
		e.held[key] = true
		e.gauges()
		e.holdBack(st)
		if p != nil {
			p.rep.add(st, outcome{kind: outHeldBack, err: st.Err})
		}
		return nil
	}
	if !strings.HasPrefix(key, e.o.Prefix) {
		e.log.Error("key outside the configured prefix ignored", "key", key, "path", st.Path, "prefix", e.o.Prefix)
		return nil
	}
	if e.held[key] {
		delete(e.held, key)
		e.gauges()
	}
	if p == nil {
		if r, ok := e.rejected[key]; ok {
			if sameIntent(r, st) {
				e.log.Debug("key failed permanently in this state; waiting for a change or a full sync", "key", key)
				return nil
			}
			delete(e.rejected, key)
		}
	}
	// Comparing here keeps unchanged keys out of the queue; the worker
	// compares again, since the store may change while the key waits. A
	// pass that found no record under the prefix when it started (a first
	// publish) skips it for writes: a record made since, by a write queued
	// before the pass, is still compared by the worker, so the most a skip
	// costs is that key's turn in the queue.
	force := false
	if p != nil && p.remote != nil && !st.Deleted {
		// The listing is the truth for a full sync that has one.
		same, kind := e.compareRemote(p.remote, st)
		if same && !e.busy(key) {
			rk, _ := p.remote.get(key)
			e.adopt(p, st, rk)
			e.countUpload(metrics.UploadUnchanged, 0)
			p.rep.Unchanged++
			return nil
		}
		if kind != driftNone {
			if rec, ok, err := e.driftRecordOf(p, key); err == nil && ok && unchanged(st, rec, e.o.Now()) {
				e.noteDrift(p, key, kind)
			}
		}
		if !same {
			e.claim(p, key)
		}
		force = !same
	}
	if !force && !e.busy(key) && (p == nil || p.remote != nil && st.Deleted || p.remote == nil && (!p.unrecorded || st.Deleted)) {
		rec, ok, err := e.recordOf(p, key)
		if err != nil {
			e.storeErr(metrics.StoreRead)
			e.log.Warn("reading the state store failed; the key is queued anyway", "key", key, "err", err)
		} else if st.Deleted && !ok {
			e.log.Debug("file gone but kvsync never wrote its key; left alone", "key", key)
			return nil
		} else if !st.Deleted && ok && unchanged(st, rec, e.o.Now()) {
			e.restamp(p, st, rec)
			e.countUpload(metrics.UploadUnchanged, 0)
			if p != nil {
				p.rep.Unchanged++
			}
			return nil
		}
	}
	if p == nil && st.Deleted && !e.allowWatchedDelete(st) {
		return nil
	}
	it := &item{st: st, force: force}
	if p != nil {
		it.passes = []*pass{p}
		p.left++
	}
	if err := e.submit(ctx, it, true); err != nil {
		if p != nil {
			p.left--
		}
		return err
	}
	return nil
}

// restamp records st's stamp with rec, the record of its unchanged key,
// when they differ (a file touched, or copied with its content kept, or a
// record from before stamps): the next scan, in a new process too, then
// need not read the file to know it unchanged. mu is held.
func (e *Engine) restamp(p *pass, st desired.State, rec state.Record) {
	if st.Stamp.IsZero() || rec.Stamp == st.Stamp || rec.Hash != st.Hash || e.o.DryRun {
		return
	}
	rec.Stamp = st.Stamp
	if p != nil {
		e.stage(p, st.Key, rec)
		return
	}
	if err := e.o.Store.PutBatch(e.o.Scope, map[string]state.Record{st.Key: rec}); err != nil {
		e.storeErr(metrics.StoreRecord)
	}
}

// holdBack drops the queued state of a key whose file cannot be published
// now: the key must stay exactly as it is in KV.
func (e *Engine) holdBack(st desired.State) {
	key := st.Key
	// The watcher, which found the problem, has logged it at warning level
	// with its reason; saying it again here would report each file twice.
	e.log.Debug("file held back: its key is neither written nor deleted", "key", key, "path", st.Path, "err", st.Err)
	drop := func(it *item) {
		e.resolve(it, outcome{kind: outHeldBack, err: st.Err}, false)
	}
	if it := e.pending[key]; it != nil {
		e.countCat(it, -1)
		delete(e.pending, key)
		e.queue = slices.DeleteFunc(e.queue, func(q *item) bool { return q == it })
		drop(it)
	}
	if it := e.deferred[key]; it != nil {
		delete(e.deferred, key)
		drop(it)
	}
	if it := e.delayed[key]; it != nil {
		delete(e.delayed, key)
		drop(it)
	}
	e.gauges()
	e.broadcast()
}

func (e *Engine) busy(key string) bool {
	return e.pending[key] != nil || e.inflight[key] || e.delayed[key] != nil
}

func (e *Engine) size() int { return len(e.pending) + len(e.deferred) + len(e.delayed) }

// submit puts it in the queue, coalescing with what is there for its key.
// With block set it waits while the queue is full. mu is held.
func (e *Engine) submit(ctx context.Context, it *item, block bool) error {
	key := it.st.Key
	for {
		if e.inflight[key] {
			if next := e.deferred[key]; next != nil {
				it.passes = append(next.passes, it.passes...)
			}
			e.deferred[key] = it
			e.gauges()
			return nil
		}
		if old := e.pending[key]; old != nil {
			e.countCat(old, -1)
			old.st, old.expect, old.attempts, old.split = it.st, it.expect, it.attempts, it.split
			old.passes = append(old.passes, it.passes...)
			old.cat = e.category(old)
			e.countCat(old, 1)
			e.poke()
			return nil
		}
		if old := e.delayed[key]; old != nil {
			delete(e.delayed, key)
			it.passes = append(old.passes, it.passes...)
			e.push(it)
			return nil
		}
		if !block || e.size() < e.o.QueueSize {
			e.push(it)
			return nil
		}
		if e.closed {
			return ErrClosed
		}
		ch := e.bcast
		e.waiting++
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		e.mu.Lock()
		e.waiting--
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// push appends an item for a key that is neither queued, in flight nor
// delayed. mu is held.
func (e *Engine) push(it *item) {
	it.taken = false
	it.cat = e.category(it)
	e.pending[it.st.Key] = it
	e.queue = append(e.queue, it)
	e.countCat(it, 1)
	e.gauges()
	e.poke()
}

func (e *Engine) category(it *item) category {
	switch {
	case it.st.Deleted:
		return catDelete
	case it.split == 1 || it.st.Size > e.o.BulkThreshold:
		return catLarge
	default:
		return catSmall
	}
}

func (e *Engine) countCat(it *item, d int) {
	switch it.cat {
	case catSmall:
		e.nSmall += d
		if len(it.passes) > 0 {
			e.nSmallPass += d
		}
	case catDelete:
		e.nDelete += d
	}
}

// take moves a queued item to in flight (the caller removes it from queue).
func (e *Engine) take(it *item) {
	it.taken = true
	e.countCat(it, -1)
	delete(e.pending, it.st.Key)
	e.inflight[it.st.Key] = true
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) broadcast() {
	close(e.bcast)
	e.bcast = make(chan struct{})
}

func (e *Engine) gauges() {
	if m := e.o.Metrics; m != nil {
		m.QueueDepth.Set(float64(e.size()))
		m.InflightUploads.Set(float64(e.jobs))
		m.HeldBack.Set(float64(len(e.held)))
	}
}
