//go:build linux

package watcher

import (
	"context"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvsync/kvsync/internal/beneath"
)

// readDirStat lists the directory rel beneath root (abs, for messages) in
// name order and lstats the entries the walk needs (wantStat) relative to
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
			fi := &statInfo{name: e.name}
			if err := fstatat(int(fd), e.name, &fi.st); err != nil {
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

// fstatat lstats name in the directory dirfd into st, the type fileIDOf
// knows (x/sys fills its own, identically laid out, Stat_t).
func fstatat(dirfd int, name string, st *syscall.Stat_t) error {
	var u unix.Stat_t
	for {
		err := unix.Fstatat(dirfd, name, &u, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return err
		}
	}
	*st = syscall.Stat_t{
		Dev:     u.Dev,
		Ino:     u.Ino,
		Nlink:   u.Nlink,
		Mode:    u.Mode,
		Uid:     u.Uid,
		Gid:     u.Gid,
		Rdev:    u.Rdev,
		Size:    u.Size,
		Blksize: u.Blksize,
		Blocks:  u.Blocks,
		Atim:    syscall.Timespec(u.Atim),
		Mtim:    syscall.Timespec(u.Mtim),
		Ctim:    syscall.Timespec(u.Ctim),
	}
	return nil
}

// statInfo is the fs.FileInfo of an lstat made relative to a directory,
// built the way os.Lstat builds its own, Sys included.
type statInfo struct {
	name string
	st   syscall.Stat_t
}

func (fi *statInfo) Name() string       { return fi.name }
func (fi *statInfo) Size() int64        { return fi.st.Size }
func (fi *statInfo) ModTime() time.Time { return time.Unix(fi.st.Mtim.Unix()) }
func (fi *statInfo) IsDir() bool        { return fi.Mode().IsDir() }
func (fi *statInfo) Sys() any           { return &fi.st }

func (fi *statInfo) Mode() fs.FileMode {
	m := fs.FileMode(fi.st.Mode & 0o777)
	switch fi.st.Mode & syscall.S_IFMT {
	case syscall.S_IFBLK:
		m |= fs.ModeDevice
	case syscall.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFDIR:
		m |= fs.ModeDir
	case syscall.S_IFIFO:
		m |= fs.ModeNamedPipe
	case syscall.S_IFLNK:
		m |= fs.ModeSymlink
	case syscall.S_IFSOCK:
		m |= fs.ModeSocket
	}
	if fi.st.Mode&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if fi.st.Mode&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if fi.st.Mode&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
