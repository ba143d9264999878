package watcher

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/kvsync/kvsync/internal/beneath"
)

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
