package watcher

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/metrics"
)

// Defaults for the directory prefetch of a walk.
const (
	// defaultPrefetch bounds how many directories are listed ahead of the
	// walk and not yet walked, so memory stays that of a few listings
	// whatever the tree's size.
	defaultPrefetch = 16
	// defaultPrefetchEntries bounds the entries of the directories listed
	// ahead and not yet walked: a listing holds each entry's lstat (about
	// 260 bytes), and while the walk waits for the uploads (a first
	// publish), 16 directories of 4,000 files held the lstats of 64,000
	// files: 14.8 MB of a live heap of 41.5 MB, which the collector traced
	// at each of its cycles, in a heap profile of the million-file
	// benchmark's first publish.
	defaultPrefetchEntries = 16384
	// maxListers bounds the goroutines that list ahead.
	maxListers = 4
	// ctxCheckEvery is how many entries a listing stats or reads between
	// checks of its context, so a huge directory does not delay shutdown.
	ctxCheckEvery = 256
	readBatch     = 1024
)

// dirEntry is one entry of a listed directory.
type dirEntry struct {
	name string
	// dir is the listing's type: a symlink to a directory is not one.
	dir bool
	// info is the entry's lstat, taken when wantStat asked for it; nil if
	// not asked for or it failed (err says why: gone, usually).
	info fs.FileInfo
	err  error
}

// keyOrder orders the entries of one directory as their keys sort: every
// key below a directory starts with its name and "/", so a directory sorts
// as that, and a depth-first walk in this order yields keys in byte order
// ("a-b" < "a/x" < "a0", where by name alone directory "a" comes first).
// The store and KV's listings use that order, so a full sync can merge
// the walk with them instead of holding the whole tree.
func keyOrder(a, b dirEntry) int { return compareNames(a.name, a.dir, b.name, b.dir) }

// compareNames compares two entry names as keyOrder does, without
// building name+"/".
func compareNames(a string, aDir bool, b string, bDir bool) int {
	n := min(len(a), len(b))
	if c := strings.Compare(a[:n], b[:n]); c != 0 {
		return c
	}
	return cmp.Compare(sortByte(a, aDir, n), sortByte(b, bDir, n))
}

// sortByte is the byte at i of name as keyOrder sees it: '/' just past a
// directory's name, -1 past a file's.
func sortByte(name string, dir bool, i int) int {
	switch {
	case i < len(name):
		return int(name[i])
	case dir:
		return '/'
	default:
		return -1
	}
}

// find returns the index of the entry called name, a file or a directory,
// in entries sorted by keyOrder.
func find(entries []dirEntry, name string) (int, bool) {
	for _, dir := range []bool{false, true} {
		i, ok := slices.BinarySearchFunc(entries, name, func(e dirEntry, n string) int { return compareNames(e.name, e.dir, n, dir) })
		if ok {
			return i, true
		}
	}
	return 0, false
}

// has reports whether entries, sorted by keyOrder, hold name.
func has(entries []dirEntry, name string) bool {
	_, ok := find(entries, name)
	return ok
}

// wantStat reports whether the walk needs the lstat of entries[i]: every
// file except sidecars without their file, which are only noted as orphans.
func wantStat(entries []dirEntry, i int) bool {
	e := entries[i]
	if e.dir {
		return false
	}
	return !isSidecar(e.name) || has(entries, strings.TrimSuffix(e.name, SidecarSuffix))
}

// readNames reads the names and types of f's entries, sorted by keyOrder,
// checking ctx between batches.
func readNames(ctx context.Context, f *os.File) ([]dirEntry, error) {
	var out []dirEntry
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		des, err := f.ReadDir(readBatch)
		for _, d := range des {
			out = append(out, dirEntry{name: d.Name(), dir: d.IsDir()})
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(out, keyOrder)
	return out, nil
}

// subdir is a directory the walk will descend into (or note as skipped),
// and its listing when a lister prefetches it.
type subdir struct {
	rel, abs string
	skip     metrics.SkipReason // why it is not descended; "" when it is
	// ready is closed once entries and err are set; nil while the
	// directory is not submitted to the listers.
	ready chan struct{}
	// claimed is set by whoever lists it: a lister, or the walk itself
	// when it gets there before any lister did, rather than wait.
	claimed atomic.Bool
	entries []dirEntry
	err     error
}

// frame is the subdirectories of one directory on the walk's stack.
type frame struct {
	dirs []*subdir
	// next is the first not yet walked; sub the first not yet submitted
	// (sub >= next: directories are submitted in walk order).
	next, sub int
}

// walker is one walk of a tree. Only its own goroutine touches it and the
// watcher's scan state; the listers only list (and watch) directories.
type walker struct {
	w     *Watcher
	root  *beneath.Root
	ctx   context.Context
	watch bool
	res   *scanResult

	// jobs feeds the listers; nil when nothing is listed ahead.
	jobs  chan *subdir
	wg    sync.WaitGroup
	limit int
	// outstanding counts directories submitted and not yet walked: at
	// most limit, which bounds the listings held in memory.
	outstanding int
	// ahead counts the entries of the listings made ahead and not yet
	// walked; no directory is submitted while it is at entryLimit or more.
	ahead      atomic.Int64
	entryLimit int64
	frames     []*frame
}

// list watches (when watching) and lists the directory at rel (abs)
// beneath root. Listers call it too: it touches nothing but the watches,
// which have their lock, and root, which is safe for concurrent use.
func (w *Watcher) list(ctx context.Context, root *beneath.Root, rel, abs string, watch bool) ([]dirEntry, error) {
	if watch {
		w.addWatch(abs)
	}
	var before func()
	if w.listHook != nil {
		before = func() { w.listHook(abs, false) }
	}
	entries, err := readDirStat(ctx, root, rel, abs, before)
	if w.listHook != nil && err == nil {
		w.listHook(abs, true)
	}
	return entries, err
}

// walk scans the directory at rel into res. When watching, each directory
// gets its watch before it is read, so a file created in between is either
// listed or reported by an event. Directories are listed (and watched)
// ahead of the depth-first walk by a few goroutines, so listing and stat
// overlap the work on the entries; all else stays on this goroutine.
func (w *Watcher) walk(ctx context.Context, root *beneath.Root, rel, abs string, watch bool, res *scanResult) {
	wk := &walker{w: w, root: root, ctx: ctx, watch: watch, res: res, limit: w.prefetch, entryLimit: int64(w.prefetchEntries)}
	if n := min(runtime.GOMAXPROCS(0), maxListers, w.prefetch); n > 0 {
		wk.jobs = make(chan *subdir, w.prefetch)
		for range n {
			wk.wg.Go(wk.lister)
		}
		defer func() {
			// Walked to the end, nothing is queued; cut short, the
			// listers drop what is, as ctx has ended.
			close(wk.jobs)
			wk.wg.Wait()
		}()
	}
	wk.dir(&subdir{rel: rel, abs: abs})
}

func (wk *walker) lister() {
	for d := range wk.jobs {
		if !d.claimed.CompareAndSwap(false, true) {
			continue // the walk lists it itself and waits for nothing
		}
		if err := wk.ctx.Err(); err != nil {
			d.err = err
		} else {
			d.entries, d.err = wk.w.list(wk.ctx, wk.root, d.rel, d.abs, wk.watch)
			wk.ahead.Add(int64(len(d.entries)))
		}
		close(d.ready)
	}
}

// fill submits the directories next in walk order, deepest frame first,
// while fewer than limit are outstanding and their listings hold fewer
// than entryLimit entries. The listings in progress are not counted yet,
// so the entries held ahead can pass entryLimit by what those hold.
func (wk *walker) fill() {
	if wk.jobs == nil {
		return
	}
	room := func() bool { return wk.outstanding < wk.limit && wk.ahead.Load() < wk.entryLimit }
	for i := len(wk.frames) - 1; i >= 0 && room(); i-- {
		f := wk.frames[i]
		for ; f.sub < len(f.dirs) && room(); f.sub++ {
			d := f.dirs[f.sub]
			if d.skip != "" {
				continue
			}
			d.ready = make(chan struct{})
			wk.outstanding++
			if wk.w.prefetched != nil {
				wk.w.prefetched(d.abs, wk.outstanding, wk.ahead.Load())
			}
			wk.jobs <- d // never blocks: the buffer holds limit
		}
	}
}

// entries returns d's listing, from a lister or listed here.
func (wk *walker) entries(d *subdir) ([]dirEntry, error) {
	if d.ready == nil {
		return wk.w.list(wk.ctx, wk.root, d.rel, d.abs, wk.watch)
	}
	wk.outstanding--
	if d.claimed.CompareAndSwap(false, true) {
		// Still queued: the listers are behind, so this goroutine
		// would only wait.
		return wk.w.list(wk.ctx, wk.root, d.rel, d.abs, wk.watch)
	}
	select {
	case <-d.ready:
	case <-wk.ctx.Done():
		return nil, wk.ctx.Err()
	}
	entries, err := d.entries, d.err
	d.entries = nil
	wk.ahead.Add(-int64(len(entries)))
	return entries, err
}

func (wk *walker) dir(d *subdir) {
	w, res, rel, abs := wk.w, wk.res, d.rel, d.abs
	if err := wk.ctx.Err(); err != nil {
		if d.ready != nil {
			wk.outstanding--
		}
		res.fail(rel, err)
		return
	}
	entries, err := wk.entries(d)
	if err != nil {
		if cerr := wk.ctx.Err(); cerr != nil {
			res.fail(rel, cerr)
			return
		}
		if goneFromTree(err) && rel != "" {
			// Removed, or a symlink now, since its parent was listed:
			// either way not a directory of the tree any more.
			return
		}
		w.log.Warn("cannot read directory; its keys are kept as they are", "path", abs, "error", err)
		res.fail(rel, fmt.Errorf("%s: %w", abs, err))
		return
	}
	f := &frame{}
	for _, e := range entries {
		if e.dir {
			crel, cabs := childPaths(rel, abs, e.name)
			f.dirs = append(f.dirs, &subdir{rel: crel, abs: cabs, skip: w.opts.dirSkip(crel)})
		}
	}
	wk.frames = append(wk.frames, f)
	defer func() { wk.frames = wk.frames[:len(wk.frames)-1] }()
	wk.fill()
	for _, e := range entries {
		// Checked per entry, not only per directory: hashing a large flat
		// directory can take minutes, and Run abandons a scan on shutdown.
		if err := wk.ctx.Err(); err != nil {
			res.fail(rel, err)
			return
		}
		if e.dir {
			sd := f.dirs[f.next]
			if f.next++; f.sub < f.next {
				f.sub = f.next // walked before a lister got to it
			}
			if sd.skip != "" {
				w.noteSkip(sd.rel, sd.skip, false, "directory not descended")
				continue
			}
			wk.dir(sd)
			wk.fill()
			continue
		}
		name := e.name
		crel, cabs := childPaths(rel, abs, name)
		if isSidecar(crel) {
			if base := strings.TrimSuffix(name, SidecarSuffix); !has(entries, base) && w.opts.pathSkip(sidecarOwner(crel)) == "" {
				w.noteSkip(crel, reasonOrphan, true, "ignoring metadata sidecar without its file")
			}
			continue
		}
		if e.info == nil {
			continue // removed since the listing
		}
		hint, scInfo := sidecarAbsent, fs.FileInfo(nil)
		if i, ok := find(entries, name+SidecarSuffix); ok {
			sc := entries[i]
			switch {
			case sc.info != nil:
				hint, scInfo = sidecarPresent, sc.info
			case sc.dir:
				hint = sidecarPresent // a directory: sidecar() says it is invalid
			case isGone(sc.err):
				// Removed since the listing, as sidecar() would find.
			default:
				hint = sidecarPresent // sidecar() looks again and names the error
			}
		}
		if st, ok := w.fileState(crel, cabs, e.info, hint, scInfo); ok {
			res.add(crel, st)
		}
	}
}
