package uploader

import (
	"context"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
)

// run is one life of the worker loop.
type run struct {
	ctx    context.Context
	cancel context.CancelFunc
	g      *errgroup.Group
	done   chan struct{}
}

// acquire starts the worker loop unless it runs already.
func (e *Engine) acquire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.holders++
	if e.holders > 1 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &errgroup.Group{}
	g.SetLimit(e.o.Concurrency)
	r := &run{ctx: ctx, cancel: cancel, g: g, done: make(chan struct{})}
	e.cur = r
	go e.loop(r)
}

// release stops the worker loop when nobody needs it any more, cancelling
// the requests in flight and waiting for them.
func (e *Engine) release() {
	e.mu.Lock()
	e.holders--
	var r *run
	if e.holders == 0 {
		r, e.cur = e.cur, nil
	}
	e.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

func (e *Engine) loop(r *run) {
	defer close(r.done)
	defer r.g.Wait() //nolint:errcheck // jobs report per key, never through the group
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		due := e.dispatch(r)
		timer.Stop()
		var tc <-chan time.Time
		if !due.IsZero() {
			timer.Reset(time.Until(due))
			tc = timer.C
		}
		select {
		case <-r.ctx.Done():
			return
		case <-e.wake:
		case <-tc:
		}
	}
}

// dispatch starts as many jobs as there are free slots and returns when the
// next delayed key is due (zero when none is).
func (e *Engine) dispatch(r *run) time.Time {
	if r.ctx.Err() != nil {
		return time.Time{}
	}
	e.mu.Lock()
	now := time.Now()
	if len(e.delayed) > 0 && (e.closed || !now.Before(e.nextDue)) {
		e.nextDue = time.Time{}
		for key, it := range e.delayed {
			if e.closed || !now.Before(it.notBefore) {
				delete(e.delayed, key)
				e.push(it)
			} else if e.nextDue.IsZero() || it.notBefore.Before(e.nextDue) {
				e.nextDue = it.notBefore
			}
		}
	}
	var jobs []*job
	for e.jobs < e.o.Concurrency && len(e.pending) > 0 {
		j := e.nextJob()
		if j == nil {
			break
		}
		jobs = append(jobs, j)
		e.jobs++
	}
	if len(jobs) > 0 {
		e.broadcast() // the queue shrank: blocked producers may go on
	}
	e.gauges()
	due := e.nextDue
	if len(e.delayed) == 0 {
		due = time.Time{}
	}
	e.mu.Unlock()
	for _, j := range jobs {
		r.g.Go(func() error {
			e.complete(j, e.runJob(r.ctx, j))
			return nil
		})
	}
	return due
}

// nextJob picks the next request to make, or nil when what is queued should
// wait to be batched. mu is held; pending is not empty.
func (e *Engine) nextJob() *job {
	// While a full sync is still queueing, small files wait for a full
	// batch, unless the queue is full and the producer needs room.
	hold := e.filling > 0 && e.size() < e.o.QueueSize
	batching := e.nSmall > 1 && (e.nSmallPass > 0 || e.nSmall >= e.o.BulkMinPending)
	if batching && e.bulkHeld >= e.o.BulkMaxBytes {
		// The bulk writes in flight hold as much as memory allows: small
		// files wait for one of them to finish rather than going out one
		// request each.
		hold = true
	} else if batching {
		if j := e.takeBulkPut(hold); j != nil {
			return j
		}
	}
	var front *item
	for _, it := range e.queue {
		if !hold || it.cat != catSmall {
			front = it
			break
		}
	}
	if front == nil {
		return nil
	}
	if front.cat == catDelete && e.nDelete > 1 && e.o.Delete != DeleteExpire {
		return e.takeDeletes()
	}
	e.take(front)
	if e.queue[0] == front {
		e.queue[0] = nil
		e.queue = e.queue[1:]
	} else {
		e.queue = slices.DeleteFunc(e.queue, func(it *item) bool { return it.taken })
	}
	switch {
	case front.cat != catDelete:
		return &job{kind: jobPut, items: []*item{front}}
	case e.o.Delete == DeleteExpire:
		return &job{kind: jobExpire, items: []*item{front}}
	case e.o.Delete == DeleteKeep:
		return &job{kind: jobKeep, items: []*item{front}}
	default:
		return &job{kind: jobDelete, items: []*item{front}}
	}
}

type jobKind int

const (
	jobPut jobKind = iota
	jobBulkPut
	jobDelete
	jobBulkDelete
	jobExpire
	jobKeep
)

// job is one request's worth of keys, all marked in flight.
type job struct {
	kind  jobKind
	items []*item
	// held is the estimated value bytes a bulk write holds in memory,
	// counted in Engine.bulkHeld while it runs.
	held int64
}

// runJob makes the job's request and returns one result per item.
func (e *Engine) runJob(ctx context.Context, j *job) []result {
	switch j.kind {
	case jobPut:
		return []result{e.putOne(ctx, j.items[0])}
	case jobBulkPut:
		return e.putBulk(ctx, j.items)
	case jobExpire:
		return []result{e.expireOne(ctx, j.items[0])}
	case jobKeep:
		return e.keep(j.items)
	case jobDelete:
		return []result{e.deleteOne(ctx, j.items[0])}
	default:
		return e.deleteBulk(ctx, j.items)
	}
}
