package watcher

import (
	"context"
	"io/fs"
	"path/filepath"
	"sort"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

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
		s.known.remove(krel)
		delete(s.hashes, krel)
		// Known, it had a valid key; the key is a function of the path.
		if key, err := KeyFor(w.opts.Prefix, krel); err == nil {
			out = append(out, desired.State{Key: key, Deleted: true})
		}
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
		if !force && !unhashed(st) && s.known.same(krel, st) {
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
func (w *Watcher) dirPathSkip(rel string) metrics.SkipReason {
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
