//go:build !unix

package beneath

import (
	"io/fs"
	"os"
)

// Root is an open root directory. Its methods are safe for concurrent use
// until Close.
//
// Without openat, the root is an os.Root, which keeps lookups beneath it
// but follows the symlinks that stay inside; so each directory of a path
// is checked with Lstat first, and the identity check that follows every
// open (Identity.Check) catches what changes in between.
type Root struct {
	r    *os.Root
	path string
}

// OpenRoot opens the directory at path; see the Unix version.
func OpenRoot(path string) (*Root, error) {
	r, err := os.OpenRoot(path)
	if err != nil {
		return nil, err
	}
	return &Root{r: r, path: path}, nil
}

// Path returns the path the root was opened with, for messages.
func (r *Root) Path() string { return r.path }

// Close closes the root.
func (r *Root) Close() error { return r.r.Close() }

// Open opens the file at rel for reading; see the Unix version.
func (r *Root) Open(rel string) (*os.File, error) {
	if err := r.check(rel, true); err != nil {
		return nil, err
	}
	return r.r.Open(rel)
}

// OpenDir opens the directory at rel ("" for the root) to read its entries.
func (r *Root) OpenDir(rel string) (*os.File, error) {
	if err := r.check(rel, true); err != nil {
		return nil, err
	}
	if rel == "" {
		rel = "."
	}
	return r.r.Open(rel)
}

// Lstat returns the lstat of rel, none of whose directories may be a
// symlink.
func (r *Root) Lstat(rel string) (fs.FileInfo, error) {
	if err := r.check(rel, false); err != nil {
		return nil, err
	}
	if rel == "" {
		rel = "."
	}
	return r.r.Lstat(rel)
}

// check refuses an unclean rel and one with a symlink among its
// directories (and, with last, as rel itself).
func (r *Root) check(rel string, last bool) error {
	if err := checkRel(rel); err != nil || rel == "" {
		return err
	}
	for i := 0; i <= len(rel); i++ {
		if i < len(rel) && rel[i] != '/' {
			continue
		}
		if i == len(rel) && !last {
			break
		}
		fi, err := r.r.Lstat(rel[:i])
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return &fs.PathError{Op: "open", Path: rel, Err: ErrSymlink}
		}
	}
	return nil
}

// devIno has no inode to offer here (Windows keeps its file index out of
// FileInfo): an identity is the type and size alone, and the per-component
// Lstat above is what keeps a path from leaving the root.
func devIno(fs.FileInfo) (dev, ino uint64, ok bool) { return 0, 0, true }
