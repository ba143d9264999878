// Package uploader is kvsync's engine: it decides what each key needs and
// uploads it. It knows intent, not files' meaning or HTTP: it receives
// desired states from the watcher (it is a desired.Sink), compares them
// with the state store, decides put, bulk put,
// delete or skip, keeps one write in flight per key, applies delete safety,
// marks the keys of every request pending in the store before sending it
// (a write-ahead intent, since a reply can be lost after the request took
// effect), and records a result only after the API confirmed it.
//
// Work flows through a bounded queue that coalesces by key (the newest state
// of a key replaces its older queued one; a change arriving while the key is
// being written is written after it, so the last write wins) into a pool of
// at most Concurrency requests. Full syncs and bursts go through bulk
// requests; single changes are streamed.
//
// A key goes through the files in this order:
//
//   - engine.go: the Engine, New and the public API (Run, Drain, Changed,
//     Snapshot, SyncOnce, Plan); options.go: Options and their defaults.
//   - pass.go: one full sync, from its snapshot to its deletions.
//   - queue.go: the bounded queue that coalesces by key, and what is
//     settled before it (unchanged keys, held-back files).
//   - dispatch.go: the worker loop, which picks the next request.
//   - put.go, bulk.go: a single streamed PUT, and bulk batches and their
//     request; treefile.go, smallreader_*.go: how their files are opened
//     and read; compare.go: what counts as unchanged, and the hash of what
//     was sent.
//   - intent.go: the write-ahead marks before a request, the records after.
//   - deletes.go: delete safety (candidates, max_deletes, ownership) and
//     the deletion requests of each policy.
//   - failures.go: how a failed request is classified: retried, requeued,
//     held back or rejected.
//   - results.go: completing a job, outcomes, Report and the counters.
package uploader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// ErrClosed is returned by SyncOnce after Drain: the engine accepts no work.
var ErrClosed = errors.New("uploader: engine is draining or drained")

// ErrSyncIncomplete is wrapped by SyncOnce's error when the pass did not
// reach the desired state: a key failed or was held back, or deletions were
// refused.
var ErrSyncIncomplete = errors.New("sync incomplete")

// Engine is the sync engine. Build it with New; it is safe for concurrent
// use. The worker loop runs while Run, SyncOnce or Drain is active.
type Engine struct {
	o   Options
	log *slog.Logger

	mu sync.Mutex
	// bcast is closed and replaced whenever the queue shrinks or work
	// finishes, waking blocked producers and waiters.
	bcast chan struct{}
	wake  chan struct{} // nudges the worker loop

	pending  map[string]*item // queued, dispatchable
	queue    []*item          // pending in arrival order
	inflight map[string]bool  // keys with a request in flight
	deferred map[string]*item // newer states of in-flight keys
	delayed  map[string]*item // failed keys waiting for RetryBackoff
	nextDue  time.Time
	rejected map[string]desired.State // permanently failed states
	held     map[string]bool          // keys whose latest state is held back
	// rechecked holds, per key whose file was not the one scanned, the
	// identity of the state that found it so and was handed to Recheck.
	// A state with that same identity failing again means a new look
	// changed nothing (a file system whose identities do not hold still):
	// the key is not handed over again, which would loop, and waits for
	// its file's next change or the next full sync.
	rechecked map[string]beneath.Identity
	// passedAt holds the expiration instants (Unix seconds) found passed,
	// so each is logged once, not once per file it matches.
	passedAt map[int64]bool
	// lastPassClean: the latest full sync wrote and deleted all it had to.
	// With nothing queued, failed or held back since, KV holds the tree.
	lastPassClean bool
	// watchedDeletes counts the deletions the watcher reported since the
	// last full sync finished, against MaxDeletes; watchedKept those
	// refused for it.
	watchedDeletes, watchedKept int

	nSmall, nSmallPass, nDelete int

	jobs int // requests in flight
	// bulkHeld is the estimated value bytes of the bulk writes in flight.
	// A bulk job holds its whole batch in memory until its reply, so a new
	// one starts only while bulkHeld is under BulkMaxBytes: all of them
	// together stay under twice that, whatever Concurrency is.
	bulkHeld   int64
	openPasses int
	// filling counts full syncs still offering their keys: their small
	// files wait until a bulk request is full or the pass is sealed, so a
	// large tree goes out in as few requests as possible.
	filling int
	// waiting counts producers blocked on a full queue.
	waiting    int
	holders    int
	cur        *run
	closed     bool // Drain was called: nothing new is accepted
	reconciled bool
	// prepared is the listing Prepare made for the next full sync;
	// lastList is when the last listing was made, listedOnce whether one
	// was (see listDue).
	prepared *listing
	// walking is the listing of the full sync whose scan runs now: the
	// scan is read as the sync goes (desired.Snapshot.Walk), so it asks
	// Published after the sync took the prepared listing.
	walking      *listing
	walkingMerge *merge // that sync's merge (Recorded)
	lastList     time.Time
	listedOnce   bool

	// beforeRead, when set, is called by a write job with the states
	// whose files it is about to open, before it opens any. Tests change
	// the tree there, between the scan and the read.
	beforeRead func(states []desired.State)
	// openFault, when set, is asked by a write job before it opens the
	// file of st (openWrite, readBatch); an error it returns stands for
	// the open's. Tests make a file unreadable with it where chmod cannot:
	// root reads files whatever their mode.
	openFault func(st desired.State) error
}

// New validates o and returns an idle engine.
func New(o Options) (*Engine, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{
		o:         o,
		log:       o.Logger,
		bcast:     make(chan struct{}),
		wake:      make(chan struct{}, 1),
		pending:   map[string]*item{},
		inflight:  map[string]bool{},
		deferred:  map[string]*item{},
		delayed:   map[string]*item{},
		rejected:  map[string]desired.State{},
		held:      map[string]bool{},
		rechecked: map[string]beneath.Identity{},
		passedAt:  map[int64]bool{},
		lastList:  o.Now(),
	}
	if o.Metrics != nil {
		o.Metrics.QueueDepth.Set(0)
		o.Metrics.InflightUploads.Set(0)
		o.Metrics.HeldBack.Set(0)
	}
	return e, nil
}

var _ desired.Sink = (*Engine)(nil)

// Run runs the worker loop until ctx is done, then cancels the requests in
// flight and returns once they have returned. Keys whose write was cut short
// stay queued; only their intent marks are recorded, so a restart writes
// them again. For a graceful stop, call Drain
// with a deadline before cancelling ctx.
func (e *Engine) Run(ctx context.Context) error {
	e.acquire()
	<-ctx.Done()
	e.release()
	return nil
}

// Drain stops accepting work (Changed and Snapshot then drop what they get,
// with a warning: the next startup's full sync catches up) and finishes the
// queued and in-flight work, trying failed keys once more without waiting
// for their backoff. When ctx ends first, the requests in flight are
// cancelled and Drain returns ctx's error once they have returned.
func (e *Engine) Drain(ctx context.Context) error {
	e.mu.Lock()
	e.closed = true
	e.broadcast()
	e.poke()
	e.mu.Unlock()
	e.acquire()
	defer e.release()
	err := e.WaitIdle(ctx)
	if err != nil {
		e.mu.Lock()
		r := e.cur
		n := e.size()
		e.mu.Unlock()
		if r != nil {
			r.cancel()
			<-r.done
		}
		e.log.Warn("drain gave up; the next full sync writes what is left", "pending_keys", n, "err", err)
	}
	return err
}

// WaitIdle returns when no key is queued, waiting for a retry or in flight
// and no full sync is unfinished, or with ctx's error.
func (e *Engine) WaitIdle(ctx context.Context) error {
	for {
		e.mu.Lock()
		idle := e.size() == 0 && e.jobs == 0 && e.openPasses == 0
		ch := e.bcast
		e.mu.Unlock()
		if idle {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Failing is the number of keys whose latest state failed and is not yet
// written: rejected by the API (a bad token, a value KV refuses) or waiting
// for a retry. Held-back keys are not counted: their input is at fault, and
// their keys keep their values.
func (e *Engine) Failing() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.rejected) + len(e.delayed)
}

// Changed queues the states of keys that changed. It blocks while the queue
// holds QueueSize keys and none of these, until the workers catch up.
func (e *Engine) Changed(states []desired.State) {
	dropped := 0
	for _, st := range states {
		e.mu.Lock()
		if e.closed {
			dropped++
		} else if err := e.offer(context.Background(), st, nil); err != nil {
			dropped++
		}
		e.mu.Unlock()
	}
	if dropped > 0 {
		e.log.Warn("engine is draining: changes ignored; the next full sync catches up", "keys", dropped)
	}
}

// Snapshot starts a full sync of s and returns once its keys are queued
// (blocking while the queue is full); the pass finishes in the background
// and logs its report. In a dry run it logs the plan instead.
func (e *Engine) Snapshot(s desired.Snapshot) {
	if e.o.DryRun {
		rep, err := e.Plan(context.Background(), s)
		if err != nil {
			e.log.Error("dry run: planning the full sync failed", "trigger", s.Trigger, "err", err)
			return
		}
		e.logPlan(s.Trigger, rep)
		return
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		e.log.Warn("engine is draining: full sync ignored", "trigger", s.Trigger)
		return
	}
	ctx := context.Background()
	e.mu.Lock()
	if e.cur != nil {
		ctx = e.cur.ctx
	}
	e.mu.Unlock()
	e.startPass(ctx, s, false)
}

// SyncOnce applies s as one full sync and waits for it: writes first, then,
// only if every write succeeded, deletions. The error wraps
// ErrSyncIncomplete when a key failed or was held back or deletions were
// refused. In a dry run it returns Plan's report.
func (e *Engine) SyncOnce(ctx context.Context, s desired.Snapshot) (Report, error) {
	if e.o.DryRun {
		return e.Plan(ctx, s)
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return Report{}, ErrClosed
	}
	e.acquire()
	defer e.release()
	p := e.startPass(ctx, s, true)
	if p.listed != nil {
		// The listing uses ctx too, so it ends with it; nothing of this
		// sync outlives the call.
		defer func() { <-p.listed }()
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		e.mu.Lock()
		rep := p.rep
		e.mu.Unlock()
		return rep, ctx.Err()
	}
	e.mu.Lock()
	rep := p.rep
	e.mu.Unlock()
	return rep, rep.err()
}

// Plan reports what a full sync of s would write and delete. It compares
// with the listing Prepare made, if it made one, and otherwise with the
// state store; it writes nothing.
func (e *Engine) Plan(ctx context.Context, s desired.Snapshot) (Report, error) {
	var rep Report
	now := e.o.Now()
	e.mu.Lock()
	l := e.prepared
	e.prepared = nil
	e.mu.Unlock()
	if l != nil {
		rep.List = ListInfo{Keys: len(l.keys), Owned: l.owned, Requests: l.requests}
	} else {
		rep.List.Skipped = true
	}
	m := e.newMerge(l)
	var failed error
	e.walkWith(l, m)
	defer e.walkWith(nil, nil)
	n := 0
	complete, reason := s.Each(func(st desired.State) bool {
		if failed = ctx.Err(); failed != nil {
			return false
		}
		if st.Deleted {
			return true // absent from the tree: the merge finds it
		}
		if n++; n%releaseEvery == 0 {
			e.releasePages() // as a sync does: the merge reads the whole store
		}
		found := m.tree(st.Key)
		if st.Err != nil {
			rep.add(st, outcome{kind: outHeldBack, err: st.Err})
			return true
		}
		if l != nil {
			if same, _ := e.compareRemote(l, st); same {
				rep.Unchanged++
				return true
			}
		} else {
			// The merge read the key's record on its way: a plan writes
			// nothing, so that record serves unless something wrote to
			// the store since (currentRecord checks).
			rec, ok, err := e.currentRecord(found, st.Key)
			if err != nil {
				failed = fmt.Errorf("planning key %q: %w", st.Key, err)
				return false
			}
			if ok && unchanged(st, rec, now) {
				rep.Unchanged++
				return true
			}
		}
		rep.WouldWrite = append(rep.WouldWrite, st.Key)
		rep.Bytes += st.Size
		return true
	})
	e.releasePages()
	if failed != nil {
		return rep, failed
	}
	if !complete {
		rep.Incomplete = reason
	}
	cands, refused, err := m.finish(complete, reason)
	if err != nil {
		return rep, err
	}
	rep.DeletesRefused = refused
	if refused == "" && len(cands) > 0 {
		if r := e.capRefusal(len(cands)); r != "" {
			rep.DeletesRefused = r
		} else if e.o.Delete == DeleteKeep {
			rep.Kept = len(cands)
		} else {
			for _, c := range cands {
				rep.WouldDelete = append(rep.WouldDelete, c.key)
			}
		}
	}
	slices.Sort(rep.WouldWrite)
	slices.Sort(rep.WouldDelete)
	return rep, nil
}

// walkWith makes l the listing Published answers from, and m the merge
// Recorded asks, while a full sync's scan runs (nil once it ended).
func (e *Engine) walkWith(l *listing, m *merge) {
	e.mu.Lock()
	e.walking, e.walkingMerge = l, m
	e.mu.Unlock()
}

func (e *Engine) logPlan(trigger desired.Trigger, rep Report) {
	const shown = 100 // a long diff belongs in debug, as wrangler cuts it off
	for i, k := range rep.WouldWrite {
		if i == shown {
			e.log.Info("dry run: more keys would be written", "more", len(rep.WouldWrite)-shown)
			break
		}
		e.log.Info("dry run: would write", "key", k)
	}
	for i, k := range rep.WouldDelete {
		if i == shown {
			e.log.Info("dry run: more keys would be deleted", "more", len(rep.WouldDelete)-shown)
			break
		}
		e.log.Info("dry run: would delete", "key", k)
	}
	e.log.Info("dry run: full sync planned", "trigger", trigger, "would_write", len(rep.WouldWrite),
		"would_delete", len(rep.WouldDelete), "unchanged", rep.Unchanged, "held_back", rep.HeldBack,
		"bytes", rep.Bytes, "deletes_refused", rep.DeletesRefused)
}
