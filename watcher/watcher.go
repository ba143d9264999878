// Package watcher turns a directory tree, and every change to it, into the
// desired state of KV keys (desired.State). It knows files, not HTTP: a full
// scan yields a desired.Snapshot, and fsnotify events, debounced per path,
// yield batches of changed states.
//
// Mapping: a file's key is Options.Prefix + its /-separated path relative
// to the root. "<name>.meta.json" beside a file holds its metadata and is
// never a key. Hidden paths (except .well-known) and editor/OS debris are
// skipped unless Options say otherwise.
//
// Safety: a file that exists but cannot be published as it is (an invalid
// sidecar, unreadable, too large) is emitted as a State with Err, so the
// uploader leaves its key alone rather than deleting it or wiping its
// metadata. A scan that could not read part of the tree says so
// (Snapshot.Complete false). A root that exists but is empty yields a
// complete, empty snapshot: whether emptiness is suspicious is the
// uploader's call, since only it knows how many keys would go.
//
// Every path of the tree is opened beneath its root with package beneath:
// no symlink is followed on the way, so a file or directory swapped for a
// symlink cannot make the watcher read (or hash, or take metadata from)
// anything outside the tree. A symlink in the tree is resolved to its
// target's path beneath the root, which is then opened under the same
// rules. What is read is the descriptor opened, whose identity each State
// carries for the sink to check its own read against.
//
// inotify is neither recursive nor lossless, so every directory is watched
// individually, watched before it is read, and a queue overflow or watcher
// error is answered by a full rescan; a periodic rescan is the backstop.
// Symlinks to directories are not followed.
//
// The files, one concern each:
//
//   - watcher.go: New, Scan, and the watches on directories.
//   - options.go, publishes.go: Options, and the rules of what a tree
//     publishes and when its keys expire.
//   - run.go: Run: the event loop, debouncing, and the hand-off to the sink.
//   - scan.go: what the watcher remembers between scans, one file's desired
//     state (fileState), and the full scan.
//   - walk.go, readdir_*.go: listing the tree's directories, ahead of the walk.
//   - eval.go: re-evaluating the paths events name, emitting what changed.
//   - known.go: the last state emitted per path, indexed by directory.
//   - keys.go: a file's key.
//   - sidecar.go: metadata sidecars: found, read, parsed and cached.
//   - symlink.go: a symlink's target, looked up again beneath the root.
//   - hashcache.go, fileid_*.go: content hashes, cached by file identity.
//   - paths.go: the tree's relative paths, and what a failed lookup means.
package watcher

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// Watcher publishes one tree. Build it with New.
type Watcher struct {
	opts Options
	log  *slog.Logger

	// mu guards st: Scan and Run's emitter both scan.
	mu sync.Mutex
	st *scanState

	// open opens a file beneath a root to hash or read it; tests inject
	// failures and count calls.
	open func(root *beneath.Root, rel string) (*os.File, error)
	// newSource starts the event source; tests wrap it to inject overflows
	// and refused watches.
	newSource func() (eventSource, error)

	wmu     sync.Mutex
	src     eventSource // nil when not watching
	watched map[string]struct{}
	// unwatched holds the directories whose watch the kernel refused
	// for lack of quota: only rescans see their changes.
	unwatched map[string]struct{}
	// srcRefused: Run found no inotify instance to be had.
	srcRefused bool
	// gauged are the watched and unwatched counts this watcher last added
	// to the shared gauges, which every sync's watcher adds its own to.
	gaugedWatched, gaugedUnwatched int
	degraded                       chan struct{} // signalled when the kernel refuses a watch
	// degradedRescan is the rescan interval's bound while degraded; tests
	// shorten it to see the fallback work.
	degradedRescan time.Duration
	limitLog       bool

	rescan  chan desired.Trigger
	running atomic.Bool
	// work is Run's queue while Run runs, for Recheck.
	work atomic.Pointer[work]

	// prefetch bounds the directories a walk lists ahead (walk.go); 0
	// lists each only when the walk reaches it.
	prefetch int
	// prefetchEntries bounds the entries of those listings (walk.go).
	prefetchEntries int
	// listHook, when set, is called by whichever goroutine lists a
	// directory: between reading its names and stat-ing its entries
	// (statted false) and after (true). Tests change the tree there.
	listHook func(abs string, statted bool)
	// prefetched, when set, is called by the walk with each directory it
	// hands to the listers, how many are then outstanding, and how many
	// entries the listings made ahead hold.
	prefetched func(abs string, outstanding int, ahead int64)

	// scheduled, when set, is called by the event loop with each path whose
	// debounce an event starts or extends; tests wait on it, not on sleeps.
	scheduled func(rel string)
}

// eventSource is the part of *fsnotify.Watcher the watcher uses.
type eventSource interface {
	Events() <-chan fsnotify.Event
	Errors() <-chan error
	Add(path string) error
	Remove(path string) error
	Close() error
}

type fsnotifySource struct{ w *fsnotify.Watcher }

func (s fsnotifySource) Events() <-chan fsnotify.Event { return s.w.Events }
func (s fsnotifySource) Errors() <-chan error          { return s.w.Errors }
func (s fsnotifySource) Add(p string) error            { return s.w.Add(p) }
func (s fsnotifySource) Remove(p string) error         { return s.w.Remove(p) }
func (s fsnotifySource) Close() error                  { return s.w.Close() }

func newFSNotifySource() (eventSource, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	return fsnotifySource{w}, nil
}

// New validates opts and returns a Watcher. Errors wrap ErrInvalidOptions
// and name the offending field. The root need not exist yet: scans of a
// missing root are reported incomplete.
func New(opts Options) (*Watcher, error) {
	o, err := opts.finalize()
	if err != nil {
		return nil, err
	}
	return &Watcher{
		opts:            o,
		log:             o.Logger.With("root", o.Root),
		st:              newScanState(),
		open:            openFile,
		prefetch:        defaultPrefetch,
		prefetchEntries: defaultPrefetchEntries,
		newSource:       newFSNotifySource,
		watched:         make(map[string]struct{}),
		unwatched:       make(map[string]struct{}),
		degraded:        make(chan struct{}, 1),
		rescan:          make(chan desired.Trigger, 1),

		degradedRescan: degradedRescan,
	}, nil
}

// Scan runs one full scan without watching, for one-shot syncs, plans and
// checks. The hash cache it fills speeds up later scans. It returns an
// error only when ctx ends; an unreadable tree yields an incomplete
// snapshot instead.
func (w *Watcher) Scan(ctx context.Context, trigger desired.Trigger) (desired.Snapshot, error) {
	snap := w.Stream(ctx, trigger).Collect()
	if err := ctx.Err(); err != nil {
		return snap, err
	}
	return snap, nil
}

// Stream is Scan without the states held: the snapshot's Walk runs the
// scan when its consumer reads it, handing each state over as it is found,
// in key byte order, so a sync of a large tree merges it with the state
// store instead of holding it. A scan that ctx cut short is incomplete.
func (w *Watcher) Stream(ctx context.Context, trigger desired.Trigger) desired.Snapshot {
	return desired.Snapshot{Trigger: trigger, Walk: func(yield func(desired.State) bool) (bool, string) {
		complete, reason, _ := w.fullScan(ctx, trigger, false, false, yield)
		if err := ctx.Err(); err != nil && complete {
			return false, err.Error()
		}
		return complete, reason
	}}
}

// Rescan asks a running Run for a full rescan (on SIGHUP, say). Requests
// made while one is pending coalesce.
func (w *Watcher) Rescan(trigger desired.Trigger) {
	select {
	case w.rescan <- trigger:
	default:
	}
}

func (w *Watcher) watching() bool {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return w.src != nil
}

// isLimit reports whether err is the kernel refusing a watch or an
// inotify instance for lack of quota.
func isLimit(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EMFILE)
}

// addWatch watches the directory at abs unless it already is. When the
// kernel refuses, the watcher degrades to rescans rather than failing.
func (w *Watcher) addWatch(abs string) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.src == nil {
		if w.srcRefused {
			// No inotify instance at all: every directory is unwatched.
			w.unwatched[abs] = struct{}{}
			w.setWatchGauge()
		}
		return
	}
	if _, ok := w.watched[abs]; ok {
		return
	}
	err := w.src.Add(abs)
	switch {
	case err == nil:
		w.watched[abs] = struct{}{}
		delete(w.unwatched, abs)
		w.setWatchGauge()
	case isGone(err):
	case isLimit(err):
		w.unwatched[abs] = struct{}{}
		w.setWatchGauge()
		if !w.limitLog {
			w.limitLog = true
			w.log.Error("the kernel refused an inotify watch; changes there are seen only by periodic rescans. "+
				"Raise sysctl fs.inotify.max_user_watches (ENOSPC) or fs.inotify.max_user_instances (EMFILE)",
				"path", abs, "error", err)
		}
		select {
		case w.degraded <- struct{}{}:
		default:
		}
	default:
		w.log.Warn("cannot watch directory; its changes are seen only by rescans", "path", abs, "error", err)
	}
}

// dropWatches forgets the watches of abs and every directory below it: a
// moved directory keeps its inotify watch under the old name, which would
// report events at paths that no longer exist.
func (w *Watcher) dropWatches(abs string) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	prefix := abs + string(os.PathSeparator)
	below := func(d string) bool { return d == abs || len(d) > len(prefix) && d[:len(prefix)] == prefix }
	for d := range w.unwatched {
		if below(d) {
			delete(w.unwatched, d)
		}
	}
	if _, ok := w.watched[abs]; ok && w.src != nil {
		for d := range w.watched {
			if below(d) {
				_ = w.src.Remove(d) // already gone with its directory, usually
				delete(w.watched, d)
			}
		}
	}
	w.setWatchGauge()
}

// setWatchGauge adds to the sync's gauges what changed in this watcher's
// counts since it last did, rather than setting them: the series are the
// sync's, not the watcher's, and outlive it when a reload replaces it, so
// a watcher accounts only for the watches it holds.
func (w *Watcher) setWatchGauge() {
	if w.opts.Metrics == nil {
		return
	}
	w.opts.Metrics.Watches.Add(float64(len(w.watched) - w.gaugedWatched))
	w.opts.Metrics.Unwatched.Add(float64(len(w.unwatched) - w.gaugedUnwatched))
	w.gaugedWatched, w.gaugedUnwatched = len(w.watched), len(w.unwatched)
}

// startSource replaces the event source with a fresh one and forgets every
// watch; the full scan that follows adds them again. After an overflow the
// old source's path bookkeeping cannot be trusted (a missed rename leaves
// watches under stale names), so it is not reused.
func (w *Watcher) startSource() eventSource {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.src != nil {
		_ = w.src.Close()
		w.src = nil
	}
	clear(w.watched)
	clear(w.unwatched)
	w.srcRefused = false
	w.setWatchGauge()
	src, err := w.newSource()
	if err != nil {
		w.srcRefused = true
		msg := "cannot start inotify; changes are seen only by periodic rescans"
		if isLimit(err) {
			msg += ". Raise sysctl fs.inotify.max_user_instances"
		}
		w.log.Error(msg, "error", err)
		select {
		case w.degraded <- struct{}{}:
		default:
		}
		return nil
	}
	w.src = src
	return src
}

func (w *Watcher) stopSource() {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.src != nil {
		_ = w.src.Close()
		w.src = nil
	}
	w.srcRefused = false
	clear(w.watched)
	clear(w.unwatched)
	w.setWatchGauge()
}

// errRunning is returned by Run when another Run of the same Watcher is active.
var errRunning = errors.New("watcher: Run is already running")
