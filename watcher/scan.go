package watcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// racyWindow is how old a file's timestamps must be before its hash is
// cached. File times tick coarsely (a jiffy locally, worse on network file
// systems), so a file rewritten with the same size within one tick of being
// hashed would keep its identity; like git's "racily clean" entries, such
// files are hashed again next time instead of trusted.
const racyWindow = 2 * time.Second

// maxSidecarRead bounds how much of a sidecar is read: its compacted form is
// at most 1 KiB, so a file this large is surely not a valid one.
const maxSidecarRead = 64 << 10

type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

type hashEntry struct {
	id   fileID
	hash string
}

type sidecarEntry struct {
	id   fileID
	meta json.RawMessage
	err  error
}

type skipEntry struct {
	reason string
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
	gen     uint64
	// linkTarget maps a symlink's relative path to its target's, so a change
	// of the target re-evaluates the link.
	linkTarget map[string]string
	realRoot   string
	// root is the tree's root, open while a scan or an evaluation runs
	// (under Watcher.mu); every path of the tree is opened beneath it.
	// sysRoot is "/", opened only for targets of symlinks that
	// AllowSymlinksOutside lets out of the tree.
	root, sysRoot *beneath.Root
	buf           []byte
}

func newScanState() *scanState {
	return &scanState{
		hashes:     make(map[string]hashEntry),
		sidecars:   make(map[string]sidecarEntry),
		known:      knownSet{states: make(map[string]desired.State), dirs: make(map[string]int)},
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

// under reports whether rel is dir or below it; "" is the root.
func under(rel, dir string) bool {
	return dir == "" || rel == dir || strings.HasPrefix(rel, dir+"/")
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// childPaths returns the relative and absolute paths of the entry name of
// the directory at rel (whose absolute path is abs). The relative path is
// a substring of the absolute one where it can be, so a tree's paths and
// keys (which, without a prefix, are the relative paths) are stored once.
func childPaths(rel, abs, name string) (crel, cabs string) {
	if strings.HasSuffix(abs, string(os.PathSeparator)) {
		cabs = abs + name // the root directory
	} else {
		cabs = abs + string(os.PathSeparator) + name
	}
	switch {
	case os.PathSeparator != '/':
		return joinRel(rel, name), cabs
	case rel == "":
		return cabs[len(cabs)-len(name):], cabs
	case len(abs) > len(rel) && abs[len(abs)-len(rel)-1] == '/' && abs[len(abs)-len(rel):] == rel:
		return cabs[len(abs)-len(rel):], cabs
	}
	return joinRel(rel, name), cabs
}

// openFile opens rel beneath root, following no symlink and without
// blocking: should a FIFO slip past the mode checks (a race), opening it
// must not hang the watcher.
func openFile(root *beneath.Root, rel string) (*os.File, error) { return root.Open(rel) }

func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// goneFromTree reports whether a lookup beneath the root failed because
// the path is no longer in the tree as the rules see it: removed, or
// behind a directory that is now a symlink, which the tree does not
// follow (evaluating that directory itself says what became of it).
func goneFromTree(err error) bool { return isGone(err) || errors.Is(err, beneath.ErrSymlink) }

// noteSkip records that rel is not published and why, logging and counting
// only when that is news.
func (w *Watcher) noteSkip(rel, reason string, warn bool, msg string, args ...any) {
	s := w.st
	if e, ok := s.skipped[rel]; ok && e.reason == reason {
		s.skipped[rel] = skipEntry{reason, s.gen}
		return
	}
	s.skipped[rel] = skipEntry{reason, s.gen}
	if w.opts.Metrics != nil && reason != reasonOrphan {
		w.opts.Metrics.FilesSkipped.WithLabelValues(reason).Inc()
	}
	args = append([]any{"path", filepath.Join(w.opts.Root, rel), "reason", reason}, args...)
	if warn {
		w.log.Warn(msg, args...)
	} else {
		w.log.Debug(msg, args...)
	}
}

// resolved is a file ready to be hashed: where its bytes are (rel beneath
// root; path for messages) and its identity as seen by lstat.
type resolved struct {
	root *beneath.Root
	rel  string
	path string
	info fs.FileInfo
}

// resolve follows rel to a regular file, applying the symlink and special
// file rules. ok is false when rel is not to be published.
func (w *Watcher) resolve(rel, abs string, lst fs.FileInfo) (r resolved, ok bool) {
	s := w.st
	delete(s.linkTarget, rel)
	r = resolved{root: s.root, rel: rel, path: abs, info: lst}
	if lst.Mode()&fs.ModeSymlink != 0 {
		t, err := w.follow(abs)
		switch {
		case errors.Is(err, errOutside):
			w.noteSkip(rel, reasonSymlink, true, "skipping symlink leading outside the root (see AllowSymlinksOutside)", "target", t.path)
			return r, false
		case errors.Is(err, errDangling):
			w.noteSkip(rel, reasonSymlink, true, "skipping dangling symlink")
			return r, false
		case err != nil:
			w.noteSkip(rel, reasonSymlink, true, "skipping symlink whose target cannot be read", "error", err)
			return r, false
		case t.info.IsDir():
			w.noteSkip(rel, reasonSymlink, true, "skipping symlink to a directory: directories are not followed", "target", t.path)
			return r, false
		}
		if t.root == s.root {
			s.linkTarget[rel] = t.rel
		}
		r = t
	}
	if !r.info.Mode().IsRegular() {
		w.noteSkip(rel, reasonSpecial, true, "skipping special file (FIFO, socket or device)", "mode", r.info.Mode().String())
		return r, false
	}
	return r, true
}

// Why follow cannot give a symlink's target.
var (
	errOutside  = errors.New("symlink leads outside the root")
	errDangling = errors.New("dangling symlink")
)

// follow resolves the symlink at abs to its target, which is then looked
// up again beneath the root with package beneath: its lstat (not a stat)
// through directories that are not symlinks. EvalSymlinks only says where
// the link leads; it is a lookup by path, which anything can race, so
// nothing it finds is read: what is read is what the lookup beneath the
// root finds, and a target that moved or became a symlink since fails
// there. A target outside the root is errOutside unless
// AllowSymlinksOutside: then it is looked up beneath "/" by its real
// path, under the same rules, and pinned by identity like any other file.
func (w *Watcher) follow(abs string) (resolved, error) {
	s := w.st
	target, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if isGone(err) {
			return resolved{}, errDangling
		}
		return resolved{}, fmt.Errorf("cannot be resolved (a loop?): %w", err)
	}
	t := resolved{path: target}
	tr, inside := w.relToRoot(target)
	switch {
	case inside:
		t.root, t.rel = s.root, tr
	case !w.opts.AllowSymlinksOutside:
		return t, errOutside
	default:
		if s.sysRoot == nil {
			if s.sysRoot, err = beneath.OpenRoot(string(filepath.Separator)); err != nil {
				return t, err
			}
		}
		t.root, t.rel = s.sysRoot, filepath.ToSlash(strings.TrimPrefix(target, string(filepath.Separator)))
	}
	if t.info, err = t.root.Lstat(t.rel); err != nil {
		return t, err
	}
	if t.info.Mode()&fs.ModeSymlink != 0 {
		return t, fmt.Errorf("%w: %s became a symlink while it was resolved", beneath.ErrSymlink, target)
	}
	return t, nil
}

// relToRoot maps an absolute, symlink-free path to its path relative to the
// root's real location; inside is false for paths outside it.
func (w *Watcher) relToRoot(target string) (rel string, inside bool) {
	real := w.st.realRoot
	if real == "" {
		real = w.opts.Root
	}
	r, err := filepath.Rel(real, target)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", false
	}
	if r == "." {
		return "", true
	}
	return filepath.ToSlash(r), true
}

// Whether a file has a sidecar, when a directory listing already says.
type sidecarHint int

const (
	sidecarUnknown sidecarHint = iota
	sidecarAbsent
	sidecarPresent
)

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
	st := desired.State{Key: key, Path: r.path, Root: r.root.Path(), Rel: r.rel, Size: r.info.Size(), Expiration: w.opts.expiration(rel)}

	var meta json.RawMessage
	if hint == sidecarAbsent {
		delete(w.st.sidecars, rel+SidecarSuffix) // saves a stat per file in scans
	} else {
		meta, err = w.sidecar(rel+SidecarSuffix, scLst)
	}
	if err != nil {
		w.noteSkip(rel, reasonMetadata, true, "holding back file: its metadata sidecar is invalid", "error", err)
		return desired.State{Key: key, Path: r.path, Err: err}, true
	}
	st.Metadata = meta

	if r.info.Size() > w.opts.MaxFileSize {
		err := fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrTooLarge, abs, r.info.Size(), w.opts.MaxFileSize)
		w.noteSkip(rel, reasonTooLarge, true, "holding back file: too large", "size", r.info.Size())
		return desired.State{Key: key, Path: r.path, Size: r.info.Size(), Err: err}, true
	}
	if w.opts.NeedHash != nil && !w.opts.NeedHash(key) {
		// Not opened, so neither cached: the sink reads it anyway, and
		// publishes it only if it is still the file lstat saw.
		delete(w.st.hashes, rel)
		delete(w.st.skipped, rel)
		st.File, _ = beneath.IdentityOf(r.info)
		return st, true
	}
	hash, size, id, err := w.hash(rel, r)
	switch {
	case err == nil:
	case isGone(err):
		return desired.State{}, false
	case errors.Is(err, beneath.ErrSymlink):
		// The file, or a directory on its way, became a symlink since it
		// was listed: its key is left alone until that change's own
		// event (or the next scan) evaluates it under the symlink rules.
		w.noteSkip(rel, reasonSymlink, true, "holding back file that became a symlink while it was scanned", "error", err)
		return desired.State{Key: key, Path: r.path, Err: err}, true
	case errors.Is(err, ErrTooLarge):
		w.noteSkip(rel, reasonTooLarge, true, "holding back file: too large", "error", err)
		return desired.State{Key: key, Path: r.path, Size: size, Err: err}, true
	case errors.Is(err, errNotRegular):
		w.noteSkip(rel, reasonSpecial, true, "skipping special file (FIFO, socket or device)")
		return desired.State{}, false
	default:
		w.noteSkip(rel, reasonUnreadable, true, "holding back unreadable file; retried on its next change or rescan", "error", err)
		return desired.State{Key: key, Path: r.path, Err: err}, true
	}
	delete(w.st.skipped, rel)
	st.Hash, st.Size, st.File = hash, size, id
	return st, true
}

// Errors a held-back State may carry, for errors.Is.
var (
	ErrTooLarge   = errors.New("file too large")
	ErrUnreadable = errors.New("file unreadable")
	errNotRegular = errors.New("not a regular file")
)

// hash returns the content hash of a resolved file and the identity of the
// file it read (see desired.State.File), from the cache when its identity
// proves it unchanged, else by streaming it through SHA-256.
//
// A file written or replaced while it is read is not an error: its hash
// is returned but never cached. Holding such a file back would keep a file
// that is always being written (a log) from ever being published, and the
// hash does no harm: the write that raced produces an event that
// re-evaluates the file, and the uploader records the hash of the bytes it
// actually sends, not this one.
func (w *Watcher) hash(rel string, r resolved) (string, int64, beneath.Identity, error) {
	s := w.st
	var none beneath.Identity
	id, idOK := fileIDOf(r.info)
	if e, ok := s.hashes[rel]; ok && idOK && e.id == id {
		bid, _ := beneath.IdentityOf(r.info)
		return e.hash, id.size, bid, nil
	}
	delete(s.hashes, rel)
	f, err := w.open(r.root, r.rel)
	if err != nil {
		if isGone(err) || errors.Is(err, beneath.ErrSymlink) {
			return "", 0, none, err
		}
		return "", 0, none, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	defer f.Close()
	// The descriptor, not the path, is what is hashed: its fstat is the
	// identity the sink checks before publishing.
	fi, err := f.Stat()
	if err != nil {
		return "", 0, none, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", 0, none, errNotRegular
	}
	before, beforeOK := fileIDOf(fi)
	bid, _ := beneath.IdentityOf(fi)
	if fi.Size() > w.opts.MaxFileSize {
		return "", fi.Size(), none, fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrTooLarge, r.path, fi.Size(), w.opts.MaxFileSize)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.LimitReader(f, w.opts.MaxFileSize+1), s.buf)
	if err != nil {
		return "", 0, none, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	if n > w.opts.MaxFileSize {
		return "", n, none, fmt.Errorf("%w: %s grew past the limit of %d bytes", ErrTooLarge, r.path, w.opts.MaxFileSize)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if after, err := f.Stat(); err == nil && beforeOK {
		aid, _ := fileIDOf(after)
		settled := w.opts.Now().Add(-racyWindow).UnixNano()
		if aid == before && before.size == n && before.mtime < settled && before.ctime < settled {
			s.hashes[rel] = hashEntry{id: before, hash: sum}
		}
	}
	return sum, n, bid, nil
}

// sidecar returns the metadata in the sidecar at rel, nil when there is
// none, or an error naming it when it is invalid. lst, when not nil, is the
// sidecar's lstat from the directory's listing: unless it is a symlink, it
// is what a lookup now would say, and is trusted instead of asked again.
// The sidecar is read beneath the root like any file of the tree: a
// symlink follows the rules of follow, and a file read is the one opened
// beneath the root, whatever the listing said.
func (w *Watcher) sidecar(rel string, lst fs.FileInfo) (json.RawMessage, error) {
	s := w.st
	abs := filepath.Join(w.opts.Root, rel)
	if lst != nil && lst.Mode()&fs.ModeSymlink != 0 {
		lst = nil // the symlink rules below look at it again
	}
	src := resolved{root: s.root, rel: rel, path: abs, info: lst}
	if lst == nil {
		fi, err := s.root.Lstat(rel)
		if err != nil {
			delete(s.sidecars, rel)
			if isGone(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
		}
		src.info = fi
		if fi.Mode()&fs.ModeSymlink != 0 {
			// The symlink rule holds for sidecars too: metadata must not be
			// read from outside the root.
			t, err := w.follow(abs)
			switch {
			case errors.Is(err, errDangling):
				delete(s.sidecars, rel)
				return nil, nil
			case errors.Is(err, errOutside):
				return nil, fmt.Errorf("%w: %s is a symlink leading outside the root", ErrBadSidecar, abs)
			case err != nil:
				return nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
			}
			src = t
		}
	}
	id, idOK := fileIDOf(src.info)
	if e, ok := s.sidecars[rel]; ok && idOK && e.id == id {
		return e.meta, e.err
	}
	delete(s.sidecars, rel)
	meta, gone, read, err := w.readSidecar(src)
	if gone && lst != nil {
		// Removed since the listing: as a lookup now would have found.
		return nil, nil
	}
	// Cached under the identity of what was read, which may be newer
	// than the listing's.
	if read == nil {
		return meta, err
	}
	id, idOK = fileIDOf(read)
	settled := w.opts.Now().Add(-racyWindow).UnixNano()
	if idOK && id.mtime < settled && id.ctime < settled {
		s.sidecars[rel] = sidecarEntry{id: id, meta: meta, err: err}
	}
	return meta, err
}

// readSidecar reads and parses the sidecar src, whose lstat is src.info.
// gone reports that it could not be opened because it no longer exists;
// read is the fstat of what was read, nil when nothing was.
func (w *Watcher) readSidecar(src resolved) (meta json.RawMessage, gone bool, read fs.FileInfo, err error) {
	abs, fi := src.path, src.info
	if !fi.Mode().IsRegular() {
		return nil, false, nil, fmt.Errorf("%w: %s: not a regular file", ErrBadSidecar, abs)
	}
	if fi.Size() > maxSidecarRead {
		return nil, false, nil, fmt.Errorf("%w: %s: %d bytes, far over the %d-byte limit", ErrBadSidecar, abs, fi.Size(), 1024)
	}
	f, err := w.open(src.root, src.rel)
	if err != nil {
		return nil, isGone(err), nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
	}
	defer f.Close()
	if read, err = f.Stat(); err != nil {
		return nil, false, nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
	}
	if !read.Mode().IsRegular() {
		// Replaced by a FIFO or a device since the lookup: never read.
		return nil, false, nil, fmt.Errorf("%w: %s: not a regular file", ErrBadSidecar, abs)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSidecarRead+1))
	if err != nil {
		return nil, false, nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
	}
	meta, err = ParseSidecar(data)
	if err != nil {
		return nil, false, read, fmt.Errorf("%s: %w", abs, err)
	}
	return meta, false, read, nil
}

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

// evalPaths re-evaluates the given relative paths (files, directories, or
// paths that vanished) and returns the states that differ from those last
// emitted, and those of forced paths (Recheck) whatever they are,
// recording them as emitted.
func (w *Watcher) evalPaths(ctx context.Context, rels []string, forced map[string]struct{}) []desired.State {
	sort.Strings(rels)
	w.mu.Lock()
	defer w.mu.Unlock()
	// A root that cannot be opened answers every lookup beneath it with
	// that error, as a lookup by path would.
	rootErr := w.openRoot()
	if rootErr == nil {
		defer w.closeRoot()
	}
	var out []desired.State
	var done []string
	for _, rel := range rels {
		if len(done) > 0 && under(rel, done[len(done)-1]) {
			continue // its ancestor in this batch covers it
		}
		done = append(done, rel)
		out = w.evalOne(ctx, rel, rootErr, forced, out)
	}
	// A symlink's content is its target's: re-evaluate links whose target
	// was among the paths.
	var links []string
	for link, target := range w.st.linkTarget {
		for _, rel := range done {
			if under(target, rel) && !under(link, rel) {
				links = append(links, link)
				break
			}
		}
	}
	sort.Strings(links)
	for _, link := range links {
		out = w.evalOne(ctx, link, rootErr, forced, out)
	}
	return out
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

// evalOne re-evaluates rel and what lies below it, appending changes to out.
func (w *Watcher) evalOne(ctx context.Context, rel string, rootErr error, forced map[string]struct{}, out []desired.State) []desired.State {
	s := w.st
	abs := filepath.Join(w.opts.Root, rel)
	res := newScanResult()
	var lst fs.FileInfo
	err := rootErr
	if err == nil {
		lst, err = s.root.Lstat(rel)
	}
	switch {
	case err != nil:
		if !goneFromTree(err) {
			w.log.Warn("cannot stat path; its keys are kept as they are", "path", abs, "error", err)
			res.fail(rel, err)
		} else if rootErr == nil && w.opts.pathSkip(rel) == "" {
			if _, serr := s.root.Lstat(rel + SidecarSuffix); serr == nil {
				w.noteSkip(rel+SidecarSuffix, reasonOrphan, true, "ignoring metadata sidecar without its file")
			}
		}
	case lst.IsDir():
		if w.dirPathSkip(rel) == "" {
			w.walk(ctx, s.root, rel, abs, w.watching(), res)
		}
	default:
		if st, ok := w.fileState(rel, abs, lst, sidecarUnknown, nil); ok {
			res.found[rel] = st
		}
	}
	var gone []string
	for _, krel := range s.known.below(rel) {
		if _, ok := res.found[krel]; !ok && !res.covered(krel) {
			gone = append(gone, krel)
		}
	}
	sort.Strings(gone)
	for _, krel := range gone {
		old := s.known.states[krel]
		s.known.remove(krel)
		delete(s.hashes, krel)
		out = append(out, desired.State{Key: old.Key, Deleted: true})
	}
	keys := make([]string, 0, len(res.found))
	for krel := range res.found {
		keys = append(keys, krel)
	}
	sort.Strings(keys)
	for _, krel := range keys {
		st := res.found[krel]
		// A state without a hash (Options.NeedHash) says nothing of the
		// content, which the event may have changed: it is always emitted.
		// So is one the sink asked for again (Recheck).
		_, force := forced[krel]
		if old, ok := s.known.states[krel]; ok && !force && !unhashed(st) && sameState(old, st) {
			continue
		}
		s.known.set(krel, st)
		out = append(out, st)
	}
	return out
}

// unhashed reports whether st is a file's state whose hash was not computed.
func unhashed(st desired.State) bool { return !st.Deleted && st.Err == nil && st.Hash == "" }

// dirPathSkip applies the directory rules to rel and all its ancestors.
func (w *Watcher) dirPathSkip(rel string) string {
	if rel == "" {
		return ""
	}
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' {
			if r := w.opts.dirSkip(rel[:i]); r != "" {
				return r
			}
		}
	}
	return w.opts.dirSkip(rel)
}

// sameState reports whether emitting b after a would tell the sink nothing.
func sameState(a, b desired.State) bool {
	errText := func(e error) string {
		if e == nil {
			return ""
		}
		return e.Error()
	}
	return a.Key == b.Key && a.Path == b.Path && a.Root == b.Root && a.Rel == b.Rel && a.File == b.File &&
		a.Deleted == b.Deleted && a.Hash == b.Hash &&
		a.Size == b.Size && bytes.Equal(a.Metadata, b.Metadata) && a.Expiration.Equal(b.Expiration) &&
		errText(a.Err) == errText(b.Err)
}

// sidecarOwner maps a sidecar's relative path to its file's.
func sidecarOwner(rel string) string {
	if isSidecar(rel) {
		return strings.TrimSuffix(rel, SidecarSuffix)
	}
	return rel
}

// knownSet holds the last emitted state per relative path and, per
// directory, how many of them lie below it, so a change to one file does
// not have to look at every key to find what its path used to hold.
type knownSet struct {
	states map[string]desired.State
	dirs   map[string]int
}

func (k *knownSet) set(rel string, st desired.State) {
	if _, ok := k.states[rel]; !ok {
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			k.dirs[d]++
		}
	}
	k.states[rel] = st
}

func (k *knownSet) remove(rel string) {
	if _, ok := k.states[rel]; !ok {
		return
	}
	delete(k.states, rel)
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		if k.dirs[d]--; k.dirs[d] <= 0 {
			delete(k.dirs, d)
		}
	}
}

// below returns rel itself if known and every known path under it.
func (k *knownSet) below(rel string) []string {
	var out []string
	if rel == "" || k.dirs[rel] > 0 {
		for r := range k.states {
			if under(r, rel) {
				out = append(out, r)
			}
		}
		return out
	}
	if _, ok := k.states[rel]; ok {
		out = append(out, rel)
	}
	return out
}
