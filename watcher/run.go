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

	"github.com/kvsync/kvsync/internal/desired"
)

// work is what the event loop hands the emitter. It is a set, not a queue:
// while the sink is slow, paths that fire again coalesce instead of piling
// up, so memory is bounded by the number of distinct paths.
type work struct {
	mu     sync.Mutex
	paths  map[string]struct{}
	scan   desired.Trigger
	notify chan struct{}
}

func newWork() *work {
	return &work{paths: make(map[string]struct{}), notify: make(chan struct{}, 1)}
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

func (q *work) requestScan(t desired.Trigger) {
	q.mu.Lock()
	// The first pending trigger names the scan; later ones ride along.
	if q.scan == "" {
		q.scan = t
	}
	q.mu.Unlock()
	q.signal()
}

// take returns the pending work. A pending full scan subsumes the paths:
// it reads every file after they fired.
func (q *work) take() (desired.Trigger, []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.scan != "" {
		t := q.scan
		q.scan = ""
		clear(q.paths)
		return t, nil
	}
	if len(q.paths) == 0 {
		return "", nil
	}
	rels := make([]string, 0, len(q.paths))
	for r := range q.paths {
		rels = append(rels, r)
	}
	clear(q.paths)
	return "", rels
}

// Run scans the tree, hands the result to sink.Snapshot, then watches it:
// changes go to sink.Changed after debouncing; periodic, overflow and
// requested rescans go to sink.Snapshot. Sink calls come from one goroutine,
// never from the loop reading events, so a slow sink cannot overflow the
// kernel's queue. Run returns nil when ctx is done, after the sink call in
// progress returns.
func (w *Watcher) Run(ctx context.Context, sink desired.Sink) error {
	if !w.running.CompareAndSwap(false, true) {
		return errRunning
	}
	defer w.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	q := newWork()
	src := w.startSource()
	defer w.stopSource()
	q.requestScan(desired.TriggerStartup)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.emit(ctx, sink, q)
	}()
	defer wg.Wait()

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
	for {
		var events <-chan fsnotify.Event
		var errs <-chan error
		if src != nil {
			events, errs = src.Events(), src.Errors()
		}
		select {
		case <-ctx.Done():
			return nil
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
			if interval <= 0 || interval > degradedRescan {
				interval = degradedRescan
				if ticker != nil {
					ticker.Stop()
				}
				ticker = time.NewTicker(interval)
				tick = ticker.C
			}
		}
	}
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
// the sink, while the event loop keeps reading events.
func (w *Watcher) emit(ctx context.Context, sink desired.Sink, q *work) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.notify:
		}
		for ctx.Err() == nil {
			trigger, rels := q.take()
			if trigger != "" {
				snap := w.fullScan(ctx, trigger, true, true)
				if ctx.Err() != nil {
					return
				}
				sink.Snapshot(snap)
				continue
			}
			if len(rels) == 0 {
				break
			}
			if states := w.evalPaths(ctx, rels); len(states) > 0 && ctx.Err() == nil {
				sink.Changed(states)
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
		if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
			w.watchTree(ev.Name)
		}
	}
	l.schedule(sidecarOwner(rel))
}

// watchTree watches a new directory and those below it, each before it is
// read, so nothing created inside escapes both the watch and the scan that
// follows the debounce.
func (w *Watcher) watchTree(abs string) {
	w.addWatch(abs)
	entries, err := os.ReadDir(abs)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		child := filepath.Join(abs, e.Name())
		if rel, ok := w.relOf(child); ok && w.opts.dirSkip(rel) == "" {
			w.watchTree(child)
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
