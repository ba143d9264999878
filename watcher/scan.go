package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
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
		known:      knownSet{states: make(map[string]fingerprint), dirs: make(map[string]int)},
		skipped:    make(map[string]skipEntry),
		linkTarget: make(map[string]string),
		buf:        make([]byte, 64<<10),
	}
}

// scanResult collects what one walk found.
type scanResult struct {
	// found maps relative paths to their states when looking them up is
	// needed (evaluating events); nil in a full scan, which only lists
	// them in states and rels, in the same order, to keep a large tree's
	// scan from holding every state twice.
	found  map[string]desired.State
	states []desired.State
	rels   []string
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
	r.states = append(r.states, st)
	r.rels = append(r.rels, rel)
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

// fullScan scans the whole tree. With commit, what it found becomes the
// last emitted state (Run); without, the scan only reports (Scan). done is
// false when ctx ended during the scan: then nothing is committed, since
// Run abandons such a scan instead of emitting it, and a path the scan saw
// must still count as unemitted when Run flushes it.
func (w *Watcher) fullScan(ctx context.Context, trigger desired.Trigger, watch, commit bool) (snap desired.Snapshot, done bool) {
	if w.opts.Metrics != nil {
		w.opts.Metrics.FullSyncs.WithLabelValues(string(trigger)).Inc()
	}
	snap = desired.Snapshot{Trigger: trigger}
	root := w.opts.Root
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.openRoot(); err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			snap.Reason = fmt.Sprintf("root %s is not a directory", root)
		} else {
			snap.Reason = fmt.Sprintf("root %s: %v", root, err)
		}
		w.log.Warn("scan incomplete: nothing will be deleted", "reason", snap.Reason)
		return snap, ctx.Err() == nil
	}
	defer w.closeRoot()
	s := w.st
	s.gen++
	if real, err := filepath.EvalSymlinks(root); err == nil {
		s.realRoot = real
	}
	res := &scanResult{}
	w.walk(ctx, s.root, "", root, watch, res)
	// Checked once, under mu: the caller must see the same answer that
	// decided the commit.
	done = ctx.Err() == nil
	snap.Complete = len(res.incomplete) == 0
	snap.Reason = strings.Join(res.reasons, "; ")

	// A set of the paths found, only when something must be checked
	// against it: a one-shot first publish caches nothing and commits
	// nothing, so it needs none.
	var found map[string]struct{}
	if snap.Complete && len(s.hashes)+len(s.sidecars) > 0 || commit && done && len(s.known.states) > 0 {
		found = make(map[string]struct{}, len(res.rels))
		for _, rel := range res.rels {
			found[rel] = struct{}{}
		}
	}
	if snap.Complete {
		// Forget what no longer exists, so memory follows the tree.
		for rel := range s.hashes {
			if _, ok := found[rel]; !ok {
				delete(s.hashes, rel)
			}
		}
		for rel := range s.sidecars {
			if _, ok := found[strings.TrimSuffix(rel, SidecarSuffix)]; !ok {
				delete(s.sidecars, rel)
			}
		}
		for rel, e := range s.skipped {
			if e.gen != s.gen {
				delete(s.skipped, rel)
			}
		}
	}
	if commit && done {
		for rel := range s.known.states {
			if _, ok := found[rel]; !ok && !res.covered(rel) {
				s.known.remove(rel)
			}
		}
		for i, rel := range res.rels {
			s.known.set(rel, res.states[i])
		}
	}
	snap.States = res.states
	if snap.States == nil {
		snap.States = []desired.State{}
	}
	// The walk lists each directory in name order, which is nearly but
	// not quite key order ("a/b" comes before "a-c").
	slices.SortFunc(snap.States, func(a, b desired.State) int { return strings.Compare(a.Key, b.Key) })
	return snap, done
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
