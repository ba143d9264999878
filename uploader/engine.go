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
package uploader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// ErrClosed is returned by SyncOnce after Drain: the engine accepts no work.
var ErrClosed = errors.New("uploader: engine is draining or drained")

// ErrSyncIncomplete is wrapped by SyncOnce's error when the pass did not
// reach the desired state: a key failed or was held back, or deletions were
// refused.
var ErrSyncIncomplete = errors.New("sync incomplete")

// Report is the outcome of one full sync (or, from Plan, what it would do).
type Report struct {
	Written, Unchanged, Deleted, Kept, Failed, HeldBack int
	// Bytes is the value bytes written (or, from Plan, to be written).
	Bytes int64
	// WouldWrite and WouldDelete list keys, sorted; only Plan and dry runs
	// fill them.
	WouldWrite, WouldDelete []string
	// Failures names the keys that failed or were held back (at most 1000;
	// Failed and HeldBack stay exact).
	Failures []Failure
	// DeletesRefused says why nothing was deleted, when deletions were due
	// but refused.
	DeletesRefused string
}

// Failure is one key that could not be published.
type Failure struct {
	Key, Path string
	Err       error
	// HeldBack: the file could not be published as it is (unreadable, an
	// invalid sidecar, too large), so its key was left as it was, rather
	// than a request that failed.
	HeldBack bool
}

func (r Report) err() error {
	if r.Failed == 0 && r.HeldBack == 0 && r.DeletesRefused == "" {
		return nil
	}
	msg := fmt.Sprintf("%d keys failed, %d held back", r.Failed, r.HeldBack)
	if r.DeletesRefused != "" {
		msg += "; deletes refused: " + r.DeletesRefused
	}
	return fmt.Errorf("%w: %s", ErrSyncIncomplete, msg)
}

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
	expect    *state.Record
	cat       category
	taken     bool
	notBefore time.Time
}

// run is one life of the worker loop.
type run struct {
	ctx    context.Context
	cancel context.CancelFunc
	g      *errgroup.Group
	done   chan struct{}
}

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

	// beforeRead, when set, is called by a write job with the states
	// whose files it is about to open, before it opens any. Tests change
	// the tree there, between the scan and the read.
	beforeRead func(states []desired.State)
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
	}
	if o.Metrics != nil {
		o.Metrics.QueueDepth.Set(0)
		o.Metrics.InflightUploads.Set(0)
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

// Plan reports what a full sync of s would write and delete, reading only
// the state store: it sends no request.
func (e *Engine) Plan(ctx context.Context, s desired.Snapshot) (Report, error) {
	var rep Report
	now := e.o.Now()
	for _, st := range s.States {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if st.Deleted {
			continue // absent from the tree: found by candidates below
		}
		if st.Err != nil {
			rep.add(st, outcome{kind: outHeldBack, err: st.Err})
			continue
		}
		rec, ok, err := e.o.Store.Get(e.o.Scope, st.Key)
		if err != nil {
			return rep, fmt.Errorf("planning key %q: %w", st.Key, err)
		}
		if ok && unchanged(st, rec, now) {
			rep.Unchanged++
			continue
		}
		rep.WouldWrite = append(rep.WouldWrite, st.Key)
		rep.Bytes += st.Size
	}
	cands, refused, err := e.candidates(s)
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

// capRefusal applies MaxDeletes to n deletions of one full sync.
func (e *Engine) capRefusal(n int) string {
	if e.o.Delete == DeleteKeep || e.o.MaxDeletes < 0 || n <= e.o.MaxDeletes {
		return ""
	}
	return fmt.Sprintf("%d keys would be deleted, more than max_deletes=%d; nothing deleted", n, e.o.MaxDeletes)
}

// allowWatchedDelete applies MaxDeletes to the deletions the watcher
// reports while running: those between two full syncs count as one pass,
// so emptying the tree under a running daemon (an rm -rf, a volume
// remounted empty, an app that wipes its output before regenerating it)
// deletes no more than a full sync would. A deletion past the cap is kept:
// the key and its record stay, and the next full sync (rescan_interval, a
// reload), finding the file still gone, decides with its own count. mu is
// held.
func (e *Engine) allowWatchedDelete(st desired.State) bool {
	if e.o.Delete == DeleteKeep || e.o.MaxDeletes < 0 {
		return true
	}
	if e.watchedDeletes < e.o.MaxDeletes {
		e.watchedDeletes++
		return true
	}
	e.watchedKept++
	if e.watchedKept == 1 {
		e.log.Error("more files deleted since the last full sync than max_deletes allows; their keys are kept until a full sync (rescan_interval, or a reload) finds them still gone and within max_deletes",
			"max_deletes", e.o.MaxDeletes, "key", st.Key, "path", st.Path)
	} else {
		e.log.Debug("deletion kept: over max_deletes since the last full sync", "key", st.Key, "path", st.Path)
	}
	if m := e.o.Metrics; m != nil {
		m.Deletes.WithLabelValues("kept").Inc()
	}
	return false
}

// candidate is a recorded key absent from a full sync's snapshot.
type candidate struct {
	key string
	rec state.Record
}

// candidates lists the keys a complete snapshot implies are gone, or says
// why none may be deleted.
func (e *Engine) candidates(s desired.Snapshot) ([]candidate, string, error) {
	if !s.Complete {
		reason := s.Reason
		if reason == "" {
			reason = "part of the tree could not be read"
		}
		return nil, fmt.Sprintf("snapshot incomplete (%s); keys absent from it are not deleted", reason), nil
	}
	present := make(map[string]struct{}, len(s.States))
	for _, st := range s.States {
		if !st.Deleted {
			present[st.Key] = struct{}{}
		}
	}
	var cands []candidate
	recorded := 0
	err := e.o.Store.ForEach(e.o.Scope, e.o.Prefix, func(key string, r state.Record) error {
		recorded++
		if _, ok := present[key]; !ok {
			cands = append(cands, candidate{key: key, rec: r})
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("listing recorded keys under prefix %q: %w", e.o.Prefix, err)
	}
	if len(present) == 0 && recorded > 0 {
		return nil, fmt.Sprintf("the tree has no files but %d keys under prefix %q were written by kvsync (a volume not mounted yet?); nothing deleted", recorded, e.o.Prefix), nil
	}
	return cands, "", nil
}

// offer queues st, or settles it at once when it needs no request. mu is
// held; it is released while waiting for room in the queue. A nil ctx waits
// until room is made or the engine closes.
func (e *Engine) offer(ctx context.Context, st desired.State, p *pass) error {
	key := st.Key
	if st.Err != nil {
		e.held[key] = true
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
	delete(e.held, key)
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
	if !e.busy(key) && (p == nil || !p.unrecorded || st.Deleted) {
		rec, ok, err := e.o.Store.Get(e.o.Scope, key)
		if err != nil {
			e.log.Warn("reading the state store failed; the key is queued anyway", "key", key, "err", err)
		} else if st.Deleted && !ok {
			e.log.Debug("file gone but kvsync never wrote its key; left alone", "key", key)
			return nil
		} else if !st.Deleted && ok && unchanged(st, rec, e.o.Now()) {
			e.count("upload", "skipped_unchanged", 0)
			if p != nil {
				p.rep.Unchanged++
			}
			return nil
		}
	}
	if p == nil && st.Deleted && !e.allowWatchedDelete(st) {
		return nil
	}
	it := &item{st: st}
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

// holdBack drops the queued state of a key whose file cannot be published
// now: the key must stay exactly as it is in KV.
func (e *Engine) holdBack(st desired.State) {
	key := st.Key
	e.log.Warn("file held back: its key is neither written nor deleted", "key", key, "path", st.Path, "err", st.Err)
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
	}
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

// takeBulkPut collects queued bulk-eligible writes into one batch bounded by
// pairs and estimated bytes; with onlyFull, only a batch that reached a
// bound. Content is read later, by the job.
func (e *Engine) takeBulkPut(onlyFull bool) *job {
	full := false
	var batch []*item
	var bytes int64
	limit := e.o.BulkMaxPairs
	for _, it := range e.queue {
		if it.taken || it.cat != catSmall {
			continue
		}
		l := limit
		if it.split > 0 && it.split < l {
			l = it.split
		}
		if len(batch)+1 > l {
			continue
		}
		est := it.st.Size + int64(len(it.st.Key)+len(it.st.Metadata)) + pairOverhead
		if len(batch) > 0 && bytes+est > e.o.BulkMaxBytes {
			full = true
			continue
		}
		batch = append(batch, it)
		bytes += est
		limit = l
		if len(batch) == limit {
			full = true
			break
		}
	}
	if len(batch) < 2 || onlyFull && !full {
		return nil
	}
	for _, it := range batch {
		e.take(it)
	}
	e.queue = slices.DeleteFunc(e.queue, func(it *item) bool { return it.taken })
	e.bulkHeld += bytes
	return &job{kind: jobBulkPut, items: batch, held: bytes}
}

// takeDeletes collects queued deletions into one bulk request.
func (e *Engine) takeDeletes() *job {
	var batch []*item
	for _, it := range e.queue {
		if !it.taken && it.cat == catDelete {
			batch = append(batch, it)
			if len(batch) == kvapi.MaxBulkPairs {
				break
			}
		}
	}
	for _, it := range batch {
		e.take(it)
	}
	e.queue = slices.DeleteFunc(e.queue, func(it *item) bool { return it.taken })
	kind := jobBulkDelete
	if e.o.Delete == DeleteKeep {
		kind = jobKeep
	}
	return &job{kind: kind, items: batch}
}

// complete settles the results of one job. A key's newer state that arrived
// while it was in flight is queued now, so the last write wins.
func (e *Engine) complete(j *job, rs []result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.bulkHeld -= j.held
	for _, r := range rs {
		it := r.it
		key := it.st.Key
		delete(e.inflight, key)
		next := e.deferred[key]
		delete(e.deferred, key)
		switch {
		case r.requeue:
			// Not settled: whoever waits for it keeps waiting.
			if next != nil {
				next.passes = append(it.passes, next.passes...)
				e.push(next)
			} else {
				e.push(it)
			}
			continue
		case r.retry:
			e.resolve(it, r.out, true)
			switch {
			case next != nil:
				e.push(next)
			case e.closed:
				e.log.Error("key not written before shutdown; the next full sync retries it", "key", key, "path", it.st.Path, "err", r.out.err)
			default:
				it.passes = nil
				it.attempts = 0
				it.notBefore = time.Now().Add(e.o.RetryBackoff)
				if e.nextDue.IsZero() || it.notBefore.Before(e.nextDue) {
					e.nextDue = it.notBefore
				}
				e.delayed[key] = it
			}
			continue
		}
		e.resolve(it, r.out, true)
		switch r.out.kind {
		case outWritten:
			delete(e.rechecked, key)
		case outRejected:
			e.rejected[key] = it.st
		case outHeldBack:
			if next == nil {
				e.held[key] = true // until its file changes (offer) or a full sync
			}
		}
		if next != nil {
			e.push(next)
		}
	}
	e.jobs--
	e.gauges()
	e.noteCaughtUp()
	e.broadcast()
	e.poke()
}

// noteCaughtUp moves the last-successful-sync gauge when KV is known to hold
// the whole tree: the latest full sync was clean and since then every change
// was written, none failed and none is held back. Refreshing it between the
// hourly full syncs lets an alert on its age catch a daemon whose writes
// keep failing within minutes, not hours.
func (e *Engine) noteCaughtUp() {
	m := e.o.Metrics
	if m == nil || !e.lastPassClean || e.o.DryRun {
		return
	}
	if e.size() == 0 && e.jobs == 0 && e.openPasses == 0 && len(e.rejected) == 0 && len(e.held) == 0 {
		m.LastSuccess.Set(float64(e.o.Now().UnixNano()) / 1e9)
	}
}

// resolve tells the passes waiting for it its outcome and counts it.
func (e *Engine) resolve(it *item, o outcome, count bool) {
	if count {
		e.countOutcome(it.st, o)
	}
	ps := it.passes
	it.passes = nil
	for _, p := range ps {
		p.rep.add(it.st, o)
		p.left--
		if p.left == 0 && p.sealed {
			e.advance(p)
		}
	}
}

func (e *Engine) countOutcome(st desired.State, o outcome) {
	switch o.kind {
	case outWritten:
		e.count("upload", "success", o.bytes)
	case outUnchanged:
		e.count("upload", "skipped_unchanged", 0)
	case outRejected:
		if st.Deleted {
			e.count("delete", "failed", 0)
		} else {
			e.count("upload", "rejected", 0)
		}
	case outFailed:
		if st.Deleted {
			e.count("delete", "failed", 0)
		} else {
			e.count("upload", "failed", 0)
		}
	case outDeleted:
		e.count("delete", "success", 0)
	case outExpired:
		e.count("delete", "expired", 0)
	case outKept:
		e.count("delete", "kept", 0)
	}
}

func (e *Engine) count(kind, result string, bytes int64) {
	m := e.o.Metrics
	if m == nil {
		return
	}
	if kind == "upload" {
		m.Uploads.WithLabelValues(result).Inc()
		if bytes > 0 {
			m.UploadBytes.WithLabelValues(result).Add(float64(bytes))
		}
		return
	}
	m.Deletes.WithLabelValues(result).Inc()
}
