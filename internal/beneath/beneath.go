// Package beneath opens the files of a tree beneath the tree's root
// directory without ever following a symlink, and checks that what it
// opened is the file a scan saw. It is the one way kvsync opens a file of a
// synced tree: the watcher's listings, hashes and sidecar reads, and the
// uploader's reads of values, all go through it, so no path is opened in
// two ways.
//
// Why not open absolute paths: the tree belongs to someone else (an app, a
// CI job, a user). Between a scan that checked a path and the read that
// follows, any component of it can be swapped for a symlink to a file
// outside the tree, /proc/self/environ (kvsync's API token) included. So:
//
//   - A Root is opened once by its path (the configured root, which is
//     trusted), and every other path is a /-separated path relative to it,
//     resolved by the kernel beneath it: on Linux with openat2
//     RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS (which also refuses /proc's magic
//     links), elsewhere, or where openat2 is missing or filtered, one
//     component at a time with O_NOFOLLOW. A symlink anywhere on the way
//     fails with ErrSymlink; "..", "." and absolute paths with ErrEscape,
//     before any system call.
//   - Resolving beneath the root is not enough on its own: a directory
//     opened beneath the root can be moved out of it afterwards, and a
//     regular file inside the root can be replaced by another one. So the
//     caller compares the opened descriptor's fstat with the Identity the
//     scan recorded (device, inode, type, size): a difference is
//     ErrChanged, and the file is not published as it stands.
package beneath

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync/atomic"
)

// Errors of this package, for errors.Is. They are wrapped in *fs.PathError
// naming the relative path (ErrSymlink, ErrEscape) or in an error naming
// the file (ErrChanged).
var (
	// ErrSymlink: a component of the path is a symlink, so it is not
	// opened. The tree's symlinks are resolved by the scan, which opens
	// their target by its own path.
	ErrSymlink = errors.New("a component of the path is a symlink")
	// ErrEscape: the path is absolute or has "..", "." or empty
	// components, so it could name something outside the root.
	ErrEscape = errors.New("path is not a clean path beneath the root")
	// ErrChanged: the file opened is not the one the scan saw (another
	// file, another type, another size). It must be scanned again.
	ErrChanged = errors.New("file changed since it was scanned")
)

// Identity is what a scan saw of a regular file: enough to tell, from an
// fstat of a descriptor opened later, whether it is still that file with
// the same length. The zero Identity matches no file on Unix, where no
// file has device 0 and inode 0.
type Identity struct {
	Dev, Ino uint64
	Size     int64
}

// IdentityOf returns the identity of a regular file from its stat (or
// lstat). ok is false for anything else: a directory, a symlink, a special
// file, or a FileInfo without the system's stat (then there is no inode
// to pin, and nothing can be checked).
func IdentityOf(fi fs.FileInfo) (id Identity, ok bool) {
	if !fi.Mode().IsRegular() {
		return Identity{}, false
	}
	dev, ino, ok := devIno(fi)
	if !ok {
		return Identity{}, false
	}
	return Identity{Dev: dev, Ino: ino, Size: fi.Size()}, true
}

// Check returns nil when fi, the fstat of a descriptor just opened, is the
// regular file id names, else an error wrapping ErrChanged that says what
// differs. name is for the message.
func (id Identity) Check(name string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is now a %s, not a regular file", ErrChanged, name, typeName(fi.Mode()))
	}
	got, ok := IdentityOf(fi)
	if !ok {
		return fmt.Errorf("%w: %s: no device and inode to compare", ErrChanged, name)
	}
	return id.compare(name, got)
}

func (id Identity) compare(name string, got Identity) error {
	switch {
	case got.Dev != id.Dev || got.Ino != id.Ino:
		return fmt.Errorf("%w: %s is another file now (device %d inode %d, the scan saw device %d inode %d)",
			ErrChanged, name, got.Dev, got.Ino, id.Dev, id.Ino)
	case got.Size != id.Size:
		return fmt.Errorf("%w: %s is %d bytes now, the scan saw %d", ErrChanged, name, got.Size, id.Size)
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// checkRel refuses a path that could lead outside the root before any
// system call sees it: absolute, or with "..", "." or empty components.
// "" names the root itself.
func checkRel(rel string) error {
	if rel == "" {
		return nil
	}
	if rel[0] == '/' || strings.IndexByte(rel, 0) >= 0 {
		return &fs.PathError{Op: "open", Path: rel, Err: ErrEscape}
	}
	for c := range strings.SplitSeq(rel, "/") {
		if c == "" || c == "." || c == ".." {
			return &fs.PathError{Op: "open", Path: rel, Err: ErrEscape}
		}
	}
	return nil
}

// noOpenat2 is set when openat2 cannot be used: the kernel lacks it
// (ENOSYS, before 5.6) or a seccomp filter refuses it (EPERM in some
// container runtimes), or a test forces the fallback.
var noOpenat2 atomic.Bool

// SetOpenat2 turns the use of openat2 on or off and returns whether it was
// on. Off, paths are resolved one component at a time, as where openat2 is
// missing; tests use it to cover that path. Outside Linux it changes
// nothing: there is no openat2.
func SetOpenat2(on bool) (was bool) { return !noOpenat2.Swap(!on) }
