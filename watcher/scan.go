package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

// skipEntry is why a path is not published, and gen the full scan that
// last saw it, so a complete scan can forget the skips of paths gone.
type skipEntry struct {
	reason metrics.SkipReason
	gen    uint64
}

// scanState is what the watcher remembers between scans. It is guarded by
// Watcher.mu.
type scanState struct {
	// hashes caches content hashes by the relative path of the key's file.
	hashes map[string]hashEntry
	// sidecars caches parsed sidecars by the sidecar's relative path.
	sidecars map[string]sidecarEntry
	// known is the last state emitted per relative path (never Deleted).
	known knownSet
	// skipped remembers why a path is not published, so each is logged and
	// counted once, not on every rescan.
	skipped map[string]skipEntry
	// gen counts full scans, to tell the skips the latest one saw.
	gen uint64
	// linkTarget maps a symlink's relative path to its target's, so a change
	// of the target re-evaluates the link.
	linkTarget map[string]string
	// realRoot is the root with its symlinks resolved: the targets
	// EvalSymlinks gives are real paths, so they are compared with it.
	realRoot string
	// root is the tree's root, open while a scan or an evaluation runs
	// (under Watcher.mu); every path of the tree is opened beneath it.
	// sysRoot is "/", opened only for targets of symlinks that
	// AllowSymlinksOutside lets out of the tree.
	root, sysRoot *beneath.Root
	// buf is the hashing buffer, shared so a scan does not allocate one
	// per file.
	buf []byte
}

func newScanState() *scanState {
	return &scanState{
		hashes:     make(map[string]hashEntry),
		sidecars:   make(map[string]sidecarEntry),
		known:      newKnownSet(),
		skipped:    make(map[string]skipEntry),
		linkTarget: make(map[string]string),
		buf:        make([]byte, 64<<10),
	}
}

// scanResult collects what one walk found.
type scanResult struct {
	// found maps relative paths to their states when looking them up is
	// needed (evaluating events); nil in a full scan, which hands each
	// state to yield as the walk finds it and keeps none.
	found map[string]desired.State
	yield func(rel string, st desired.State) bool
	// stopped: yield returned false; the walk ends without the rest.
	stopped bool
	// incomplete holds relative directories that could not be read; keys
	// below them must not be deleted.
	incomplete []string
	reasons    []string
}

func newScanResult() *scanResult {
	return &scanResult{found: make(map[string]desired.State)}
}

func (r *scanResult) add(rel string, st desired.State) {
	if r.found != nil {
		r.found[rel] = st
		return
	}
	if !r.stopped && !r.yield(rel, st) {
		r.stopped = true
	}
}

func (r *scanResult) fail(rel string, err error) {
	r.incomplete = append(r.incomplete, rel)
	r.reasons = append(r.reasons, err.Error())
}

// covered reports whether rel lies in a directory that could not be read.
func (r *scanResult) covered(rel string) bool {
	for _, d := range r.incomplete {
		if under(rel, d) {
			return true
		}
	}
	return false
}

// noteSkip records that rel is not published and why, logging and counting
// only when that is news.
func (w *Watcher) noteSkip(rel string, reason metrics.SkipReason, warn bool, msg string, args ...any) {
	s := w.st
	if e, ok := s.skipped[rel]; ok && e.reason == reason {
		s.skipped[rel] = skipEntry{reason, s.gen}
		return
	}
	s.skipped[rel] = skipEntry{reason, s.gen}
	if w.opts.Metrics != nil && reason != reasonOrphan {
		w.opts.Metrics.Skip(reason)
	}
	args = append([]any{"path", filepath.Join(w.opts.Root, rel), "reason", reason}, args...)
	if warn {
		w.log.Warn(msg, args...)
	} else {
		w.log.Debug(msg, args...)
	}
}

// fileState computes the desired state of the file at rel. ok is false when
// it is not a key: excluded, a sidecar, skipped, or gone. lst may be nil;
// so may scLst, the sidecar's lstat when a listing took it.
func (w *Watcher) fileState(rel, abs string, lst fs.FileInfo, hint sidecarHint, scLst fs.FileInfo) (desired.State, bool) {
	if isSidecar(rel) {
		return desired.State{}, false
	}
	if reason := w.opts.pathSkip(rel); reason != "" {
		w.noteSkip(rel, reason, false, "not published")
		return desired.State{}, false
	}
	key, err := KeyFor(w.opts.Prefix, rel)
	if err != nil {
		w.noteSkip(rel, reasonKeyInvalid, true, "skipping file with no valid key", "error", err)
		return desired.State{}, false
	}
	if lst == nil {
		if lst, err = w.st.root.Lstat(rel); err != nil {
			if !goneFromTree(err) {
				w.log.Warn("cannot stat file", "path", abs, "error", err)
			}
			return desired.State{}, false
		}
	}
	r, ok := w.resolve(rel, abs, lst)
	if !ok {
		return desired.State{}, false
	}
	st := desired.State{Key: key, Path: abs, Root: r.root.Path(), Rel: r.rel, Size: r.info.Size(), Expiration: w.opts.expiration(rel)}

	var meta json.RawMessage
	if hint == sidecarAbsent {
		delete(w.st.sidecars, rel+SidecarSuffix) // saves a stat per file in scans
	} else {
		meta, err = w.sidecar(rel+SidecarSuffix, scLst)
	}
	if err != nil {
		w.noteSkip(rel, reasonMetadata, true, "holding back file: its metadata sidecar is invalid", "error", err)
		return desired.State{Key: key, Path: abs, Err: err}, true
	}
	st.Metadata = meta

	if r.info.Size() > w.opts.MaxFileSize {
		err := fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrTooLarge, abs, r.info.Size(), w.opts.MaxFileSize)
		w.noteSkip(rel, reasonTooLarge, true, "holding back file: too large", "size", r.info.Size())
		return desired.State{Key: key, Path: abs, Size: r.info.Size(), Err: err}, true
	}
	if sum, size, id, stamp, ok := w.cachedHash(key, rel, r); ok {
		// Known unchanged by its stat: no need to ask whether the sink
		// needs the hash, which costs the same lookup again.
		delete(w.st.skipped, rel)
		st.Hash, st.Size, st.File, st.Stamp = sum, size, id, stamp
		return st, true
	}
	if w.opts.NeedHash != nil && !w.opts.NeedHash(key) {
		// Not opened, so neither cached: the sink reads it anyway, and
		// publishes it only if it is still the file lstat saw.
		delete(w.st.hashes, rel)
		delete(w.st.skipped, rel)
		st.File, _ = beneath.IdentityOf(r.info)
		return st, true
	}
	hash, size, id, stamp, err := w.hash(rel, r)
	switch {
	case err == nil:
	case isGone(err):
		return desired.State{}, false
	case errors.Is(err, beneath.ErrSymlink):
		// The file, or a directory on its way, became a symlink since it
		// was listed: its key is left alone until that change's own
		// event (or the next scan) evaluates it under the symlink rules.
		w.noteSkip(rel, reasonSymlink, true, "holding back file that became a symlink while it was scanned", "error", err)
		return desired.State{Key: key, Path: abs, Err: err}, true
	case errors.Is(err, ErrTooLarge):
		w.noteSkip(rel, reasonTooLarge, true, "holding back file: too large", "error", err)
		return desired.State{Key: key, Path: abs, Size: size, Err: err}, true
	case errors.Is(err, errNotRegular):
		w.noteSkip(rel, reasonSpecial, true, "skipping special file (FIFO, socket or device)")
		return desired.State{}, false
	default:
		w.noteSkip(rel, reasonUnreadable, true, "holding back unreadable file; retried on its next change or rescan", "error", err)
		return desired.State{Key: key, Path: abs, Err: err}, true
	}
	delete(w.st.skipped, rel)
	st.Hash, st.Size, st.File, st.Stamp = hash, size, id, stamp
	return st, true
}

// Errors a held-back State may carry, for errors.Is.
var (
	ErrTooLarge   = errors.New("file too large")
	ErrUnreadable = errors.New("file unreadable")
	errNotRegular = errors.New("not a regular file")
)

// fullScan scans the whole tree and hands each state to yield as the walk
// finds it, in key byte order (keyOrder); yield returning false stops the
// walk, incomplete. With commit, what it hands over becomes the last
// emitted state (Run), as it goes, and a scan that ran to the end forgets
// the paths it did not find; without, the scan only reports (Scan). done
// is false when ctx ended during the scan or yield stopped it: then
// nothing more is committed, and the paths it did not reach still count
// as unemitted when Run flushes them.
func (w *Watcher) fullScan(ctx context.Context, trigger desired.Trigger, watch, commit bool, yield func(desired.State) bool) (complete bool, reason string, done bool) {
	if w.opts.Metrics != nil {
		w.opts.Metrics.FullSyncs.WithLabelValues(string(trigger)).Inc()
	}
	root := w.opts.Root
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.openRoot(); err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			reason = fmt.Sprintf("root %s is not a directory", root)
		} else {
			reason = fmt.Sprintf("root %s: %v", root, err)
		}
		w.log.Warn("scan incomplete: nothing will be deleted", "reason", reason)
		return false, reason, ctx.Err() == nil
	}
	defer w.closeRoot()
	s := w.st
	s.gen++
	s.known.gen = uint32(s.gen)
	if real, err := filepath.EvalSymlinks(root); err == nil {
		s.realRoot = real
	}
	// The walk stops at the consumer's word as it does when ctx ends.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	res := &scanResult{yield: func(rel string, st desired.State) bool {
		if ctx.Err() != nil {
			// Abandoned: a state found after that is neither handed
			// over nor committed, so Run's flush emits it.
			return false
		}
		if commit {
			s.known.set(rel, st)
		}
		if !yield(st) {
			stop()
			return false
		}
		return true
	}}
	w.walk(wctx, s.root, "", root, watch, res)
	// Checked once, under mu: the caller must see the same answer that
	// decided the commit. A walk its consumer stopped did not reach
	// every path either.
	done = ctx.Err() == nil && !res.stopped
	if res.stopped {
		res.fail("", desired.ErrStopped)
	}
	complete = len(res.incomplete) == 0
	reason = strings.Join(res.reasons, "; ")

	// What the scan found carries its generation (known.set, and the
	// caches when used), so no set of the paths found is needed to tell
	// what went away.
	gen := s.gen
	if complete {
		// Forget what no longer exists, so memory follows the tree.
		for rel, e := range s.hashes {
			if e.gen != gen {
				delete(s.hashes, rel)
			}
		}
		for rel, e := range s.sidecars {
			if e.gen != gen {
				delete(s.sidecars, rel)
			}
		}
		for rel, e := range s.skipped {
			if e.gen != gen {
				delete(s.skipped, rel)
			}
		}
	}
	if commit && done {
		s.known.forgetUnmarked(res.covered)
	}
	return complete, reason, done
}

// openRoot opens the tree's root for one scan or evaluation; w.mu is held
// until closeRoot.
func (w *Watcher) openRoot() error {
	r, err := beneath.OpenRoot(w.opts.Root)
	if err != nil {
		return err
	}
	w.st.root = r
	return nil
}

func (w *Watcher) closeRoot() {
	s := w.st
	for _, r := range []*beneath.Root{s.root, s.sysRoot} {
		if r != nil {
			r.Close()
		}
	}
	s.root, s.sysRoot = nil, nil
}
