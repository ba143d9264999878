//go:build linux

package watcher

import (
	"context"
	"io/fs"
	"path/filepath"

	"github.com/kvsync/kvsync/internal/beneath"
)

// readDirStat lists the directory rel beneath root (abs, for messages) in
// key order (keyOrder) and lstats the entries the walk needs (wantStat) relative to
// the open directory: an lstat by path walks every component of the path
// again, which cost more than the stat itself on a tree a few directories
// deep, and could pass through a directory swapped for a symlink since.
// beforeStat, when set, runs between the listing and the stats (tests
// change the tree there).
func readDirStat(ctx context.Context, root *beneath.Root, rel, abs string, beforeStat func()) ([]dirEntry, error) {
	// Beneath the root with no symlink followed, and O_DIRECTORY: should
	// the path have become a FIFO since its parent was listed, opening it
	// must fail (ENOTDIR) rather than block.
	f, err := root.OpenDir(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := readNames(ctx, f)
	if err != nil {
		return nil, err
	}
	if beforeStat != nil {
		beforeStat()
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		n := 0
		for i := range entries {
			if !wantStat(entries, i) {
				continue
			}
			if n++; n%ctxCheckEvery == 0 {
				if cerr = ctx.Err(); cerr != nil {
					return
				}
			}
			e := &entries[i]
			fi, err := beneath.LstatAt(int(fd), e.name)
			if err != nil {
				e.err = &fs.PathError{Op: "lstat", Path: filepath.Join(abs, e.name), Err: err}
				continue
			}
			e.info = fi
		}
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, cerr
	}
	return entries, nil
}
