package watcher

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/kvsync/kvsync/internal/beneath"
)

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
