package watcher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// work is what the event loop hands the emitter. It is a set, not a queue:
// while the sink is slow, paths that fire again coalesce instead of piling
// up, so memory is bounded by the number of distinct paths.
type work struct {
	mu    sync.Mutex
	paths map[string]struct{}
	// forced are paths among paths whose state is emitted even when it
	// equals the last one (Watcher.Recheck).
	forced map[string]struct{}
	scan   desired.Trigger
	// final is set by Run's flush: no more scans, drain the paths, stop.
	final bool
	// inflight counts the paths taken but not yet through the sink, for
	// the log of a flush that times out.
	inflight int
	notify   chan struct{}
}

func newWork() *work {
	return &work{paths: make(map[string]struct{}), forced: make(map[string]struct{}), notify: make(chan struct{}, 1)}
}

func (q *work) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *work) addPaths(rels []string) {
	q.mu.Lock()
	for _, r := range rels {
		q.paths[r] = struct{}{}
	}
	q.mu.Unlock()
	q.signal()
}

// recheck queues rels to be evaluated and emitted whatever they hold.
func (q *work) recheck(rels map[string]struct{}) {
	q.mu.Lock()
	for r := range rels {
		q.paths[r] = struct{}{}
		q.forced[r] = struct{}{}
	}
	q.mu.Unlock()
	q.signal()
}

func (q *work) requestScan(t desired.Trigger) {
	q.mu.Lock()
	// The first pending trigger names the scan; later ones ride along.
	if q.scan == "" {
		q.scan = t
	}
	q.mu.Unlock()
	q.signal()
}

// finish queues the paths still in their debounce window and tells the
// emitter to drain and stop.
func (q *work) finish(rels []string) {
	q.mu.Lock()
	for _, r := range rels {
		q.paths[r] = struct{}{}
	}
	q.final = true
	q.mu.Unlock()
	q.signal()
}

// take returns the pending work. A pending full scan subsumes the paths: it
// reads every file after they fired. They are returned with it so that, if
// the scan is abandoned, they can be queued again. Once final, a pending
// scan is dropped and stop reports that nothing is left.
func (q *work) take() (trigger desired.Trigger, rels []string, forced map[string]struct{}, stop bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.final {
		q.scan = ""
	}
	if len(q.paths) > 0 {
		rels = make([]string, 0, len(q.paths))
		for r := range q.paths {
			rels = append(rels, r)
		}
		clear(q.paths)
	}
	if len(q.forced) > 0 {
		forced, q.forced = q.forced, make(map[string]struct{})
	}
	q.inflight = len(rels)
	if q.scan != "" {
		trigger, q.scan = q.scan, ""
	}
	return trigger, rels, forced, q.final && trigger == "" && len(rels) == 0
}

// delivered records that the paths last taken are through the sink.
func (q *work) delivered() {
	q.mu.Lock()
	q.inflight = 0
	q.mu.Unlock()
}

// unflushed counts the paths not yet through the sink.
func (q *work) unflushed() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.paths) + q.inflight
}

// gate lets Run, when its flush times out, stop sink calls from starting
// without waiting for the one in progress.
type gate struct {
	mu     sync.Mutex
	closed bool
}

func (g *gate) open() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.closed
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// Run scans the tree, hands the result to sink.Snapshot, then watches it:
// changes go to sink.Changed after debouncing; periodic, overflow and
// requested rescans go to sink.Snapshot. Sink calls come from one goroutine,
// never from the loop reading events, so a slow sink cannot overflow the
// kernel's queue, and they never overlap.
//
// When ctx is done, Run stops reading events and flushes: every path seen
// but not yet emitted (still in its debounce window, or queued behind a
// slow sink) is evaluated at once, exactly as its debounce would have
// done, and handed to sink.Changed in one or a few calls; then Run returns
// nil. A stop right after a write thus publishes it now, not at the next
// start, which on a volume that dies with the process never comes. A full
// scan in progress (or pending) at that moment is abandoned, not emitted:
// finishing it could take minutes on a large tree, and the next start's
// full scan covers it; the paths whose debounce it had subsumed are still
// flushed, but changes only a rescan would find (after an inotify
// overflow) are not. The flush takes at most Options.FlushTimeout. When that
// passes, Run logs how many paths were not flushed and returns without
// waiting for the sink call in progress, which may still be running (or
// just starting) after Run returns; no further call is made.
func (w *Watcher) Run(ctx context.Context, sink desired.Sink) error {
	if !w.running.CompareAndSwap(false, true) {
		return errRunning
	}
	defer w.running.Store(false)
	// Evaluating paths and calling the sink outlive ctx: they are the
	// flush. Only its deadline stops them. Full scans stop with ctx.
	evalCtx, stopEval := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEval()

	q := newWork()
	w.work.Store(q)
	defer w.work.Store(nil)
	src := w.startSource()
	defer w.stopSource()
	q.requestScan(desired.TriggerStartup)

	g := &gate{}
	emitted := make(chan struct{})
	go func() {
		defer close(emitted)
		w.emit(ctx, evalCtx, sink, q, g)
	}()

	l := loop{w: w, q: q, pending: make(map[string]*pend)}
	l.timer = time.NewTimer(time.Hour)
	l.timer.Stop()
	defer l.timer.Stop()

	interval := w.opts.RescanInterval
	var tick <-chan time.Time
	var ticker *time.Ticker
	if interval > 0 {
		ticker = time.NewTicker(interval)
		defer func() { ticker.Stop() }()
		tick = ticker.C
	}
	// select picks at random among ready cases; checking ctx first keeps
	// a busy event stream from delaying the flush.
	for ctx.Err() == nil {
		var events <-chan fsnotify.Event
		var errs <-chan error
		if src != nil {
			events, errs = src.Events(), src.Errors()
		}
		select {
		case <-ctx.Done():
		case ev, ok := <-events:
			if !ok {
				src = w.restart(q, desired.TriggerError, "event source closed")
				continue
			}
			l.event(ev)
		case err, ok := <-errs:
			if !ok {
				src = w.restart(q, desired.TriggerError, "event source closed")
				continue
			}
			src = w.watchError(q, err)
		case <-l.timer.C:
			l.fire()
		case <-tick:
			q.requestScan(desired.TriggerPeriodic)
		case t := <-w.rescan:
			q.requestScan(t)
		case <-w.degraded:
			// Rescans are now the only way to see some changes.
			if interval <= 0 || interval > w.degradedRescan {
				interval = w.degradedRescan
				if ticker != nil {
					ticker.Stop()
				}
				ticker = time.NewTicker(interval)
				tick = ticker.C
			}
		}
	}
	w.flush(&l, q, g, emitted, stopEval)
	return nil
}

// Recheck asks a running Run to evaluate the file of key again and to emit
// its state even if it equals the last one emitted. A sink calls it when
// the file it opened to publish is not the one the scan saw
// (beneath.ErrChanged): it published nothing, and only a new evaluation
// can say what the key should hold now, since the change that caused the
// difference may have produced no event the watcher would act on (a
// directory swapped and swapped back). Without Run (Scan, one-shot) it
// does nothing: the caller reports the key instead. It never blocks.
func (w *Watcher) Recheck(key string) {
	rel, ok := strings.CutPrefix(key, w.opts.Prefix)
	q := w.work.Load()
	if !ok || rel == "" || q == nil {
		return
	}
	q.recheck(map[string]struct{}{rel: {}})
}

// flush hands the paths still in their debounce window to the emitter and
// waits, at most FlushTimeout, for it to drain.
func (w *Watcher) flush(l *loop, q *work, g *gate, emitted <-chan struct{}, stopEval context.CancelFunc) {
	// The flush covers what was seen; new events are not read, so their
	// watches can go now.
	w.stopSource()
	l.timer.Stop()
	rels := make([]string, 0, len(l.pending))
	for rel := range l.pending {
		rels = append(rels, rel)
	}
	clear(l.pending)

	timeout := w.opts.FlushTimeout
	if timeout < 0 {
		g.close()
		stopEval()
		if n := len(rels) + q.unflushed(); n > 0 {
			w.log.Warn("stopping without flushing (FlushTimeout is negative); the next start's full scan publishes these changes if the files survive",
				"unflushed_paths", n)
		}
		return
	}
	q.finish(rels)
	if n := q.unflushed(); n > 0 {
		w.log.Info("stopping: flushing changes still being debounced", "paths", n, "timeout", timeout)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-emitted:
		return
	case <-t.C:
	}
	g.close()
	stopEval()
	w.log.Error("stopping: flush timed out; the next start's full scan publishes the rest if the files survive",
		"timeout", timeout, "unflushed_paths", q.unflushed())
}

// watchError answers an error from the event source: the kernel may have
// dropped events, so everything is rescanned.
func (w *Watcher) watchError(q *work, err error) eventSource {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		if w.opts.Metrics != nil {
			w.opts.Metrics.WatcherOverflow.Inc()
		}
		w.log.Warn("inotify event queue overflowed; rescanning everything (raising sysctl fs.inotify.max_queued_events helps)")
		return w.restart(q, desired.TriggerOverflow, "")
	}
	w.log.Warn("file watcher error; rescanning everything", "error", err)
	return w.restart(q, desired.TriggerError, "")
}

func (w *Watcher) restart(q *work, t desired.Trigger, why string) eventSource {
	if why != "" {
		w.log.Warn("restarting file watcher", "reason", why)
	}
	src := w.startSource()
	q.requestScan(t)
	return src
}

// emit is the emitter goroutine: it does the scanning and hashing and calls
// the sink, while the event loop keeps reading events. Full scans stop
// with scanCtx (Run's ctx); path evaluation and sink calls go on until
// evalCtx ends, so that the flush can finish. It returns once the flush
// has drained the work, or when evalCtx or the gate closes.
func (w *Watcher) emit(scanCtx, evalCtx context.Context, sink desired.Sink, q *work, g *gate) {
	for {
		trigger, rels, forced, stop := q.take()
		switch {
		case stop:
			return
		case trigger != "":
			if !g.open() {
				return
			}
			// The sink runs the scan as it reads the snapshot, so the
			// tree is never held whole (desired.Snapshot.Walk).
			ran, done := false, false
			sink.Snapshot(desired.Snapshot{Trigger: trigger, Walk: func(yield func(desired.State) bool) (bool, string) {
				ran = true
				complete, reason, d := w.fullScan(scanCtx, trigger, true, true, yield)
				done = d
				return complete, reason
			}})
			if !ran || !done {
				// Cut short by shutdown (or never read): what it would
				// have covered of the paths goes to the flush. What it
				// handed over is known as emitted, so only the rest is
				// emitted again.
				q.addPaths(rels)
				q.recheck(forced)
				continue
			}
			q.delivered()
		case len(rels) > 0:
			states := w.evalPaths(evalCtx, rels, forced)
			if len(states) > 0 {
				if evalCtx.Err() != nil || !g.open() {
					return
				}
				sink.Changed(states)
			}
			q.delivered()
		default:
			select {
			case <-q.notify:
			case <-evalCtx.Done():
				return
			}
		}
	}
}

// pend is one path waiting out its debounce.
type pend struct{ first, last time.Time }

// loop is the event loop's state: per-path debounce, consul-template's
// wait{min,max} and syncthing's delay/timeout. A path fires after Quiet
// without events, and no later than MaxDelay after its first event.
type loop struct {
	w       *Watcher
	q       *work
	pending map[string]*pend
	timer   *time.Timer
	armed   bool
}

func (l *loop) event(ev fsnotify.Event) {
	w := l.w
	rel, ok := w.relOf(ev.Name)
	if !ok {
		return
	}
	if rel == "" {
		// The root itself went away or moved; a scan reports it incomplete.
		// Its watches died with it; forgetting them lets a later rescan
		// watch a root that comes back.
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			w.dropWatches(ev.Name)
			l.q.requestScan(desired.TriggerError)
		}
		return
	}
	if w.dirPathSkip(rel) != "" {
		return
	}
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		w.dropWatches(ev.Name)
	}
	if ev.Has(fsnotify.Create) {
		w.watchNew(rel, ev.Name)
	}
	l.schedule(sidecarOwner(rel))
}

// watchNew watches a directory just created at rel (abs), and those below
// it, looked up beneath the root: a symlink is not a directory of the
// tree, whatever it points to.
func (w *Watcher) watchNew(rel, abs string) {
	root, err := beneath.OpenRoot(w.opts.Root)
	if err != nil {
		return
	}
	defer root.Close()
	if fi, err := root.Lstat(rel); err == nil && fi.IsDir() {
		w.watchTree(root, rel, abs)
	}
}

// watchTree watches a new directory and those below it, each before it is
// read, so nothing created inside escapes both the watch and the scan that
// follows the debounce.
func (w *Watcher) watchTree(root *beneath.Root, rel, abs string) {
	w.addWatch(abs)
	d, err := root.OpenDir(rel)
	if err != nil {
		return
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return
	}
	for _, e := range entries {
		crel := rel + "/" + e.Name()
		if e.IsDir() && w.opts.dirSkip(crel) == "" {
			w.watchTree(root, crel, filepath.Join(abs, e.Name()))
		}
	}
}

func (l *loop) schedule(rel string) {
	now := time.Now()
	if p, ok := l.pending[rel]; ok {
		p.last = now
	} else {
		l.pending[rel] = &pend{first: now, last: now}
	}
	// A new deadline is never earlier than an armed one: deadlines are
	// min(last+Quiet, first+MaxDelay) and every earlier last is <= now.
	if !l.armed {
		l.timer.Reset(l.w.opts.Quiet)
		l.armed = true
	}
	if l.w.scheduled != nil {
		l.w.scheduled(rel)
	}
}

// fire hands every due path to the emitter and re-arms for the next. Paths
// due within a quarter of Quiet go along, so bursts leave in few batches.
func (l *loop) fire() {
	l.armed = false
	o := &l.w.opts
	now := time.Now()
	horizon := now.Add(o.Quiet / 4)
	var due []string
	var next time.Time
	for rel, p := range l.pending {
		d := p.last.Add(o.Quiet)
		if m := p.first.Add(o.MaxDelay); m.Before(d) {
			d = m
		}
		if !d.After(horizon) {
			due = append(due, rel)
			delete(l.pending, rel)
			continue
		}
		if next.IsZero() || d.Before(next) {
			next = d
		}
	}
	if len(due) > 0 {
		l.q.addPaths(due)
	}
	if !next.IsZero() {
		l.timer.Reset(next.Sub(now))
		l.armed = true
	}
}

// relOf maps an absolute path from an event to its /-separated path
// relative to the root ("" for the root); ok is false outside it.
func (w *Watcher) relOf(abs string) (string, bool) {
	root := w.opts.Root
	if abs == root {
		return "", true
	}
	if !strings.HasPrefix(abs, root) || len(abs) <= len(root) || abs[len(root)] != os.PathSeparator && !strings.HasSuffix(root, string(os.PathSeparator)) {
		return "", false
	}
	rel := strings.TrimPrefix(abs[len(root):], string(os.PathSeparator))
	return filepath.ToSlash(rel), rel != ""
}
