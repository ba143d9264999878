//go:build unix

package beneath

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Root is an open root directory. Its methods are safe for concurrent use
// until Close.
type Root struct {
	fd   int
	path string
}

// OpenRoot opens the directory at path, the one path this package opens
// as given: the root is configuration, trusted, and may itself be (or lie
// behind) a symlink. Everything beneath it is opened relative to it.
func OpenRoot(path string) (*Root, error) {
	fd, err := retry(func() (int, error) {
		return unix.Open(path, dirFlags|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &Root{fd: fd, path: path}, nil
}

// Path returns the path the root was opened with, for messages.
func (r *Root) Path() string { return r.path }

// Fd returns the root's descriptor, for OpenFd and OpenDirFd. It stays
// the root's: do not close it.
func (r *Root) Fd() int { return r.fd }

// Close closes the root. Files opened beneath it stay open.
func (r *Root) Close() error { return syscall.Close(r.fd) }

// Open opens the file at rel for reading, without blocking: should a FIFO
// have taken the file's place, opening it must not hang the caller. It
// opens whatever is there (no symlink, though): the caller fstats it,
// usually through Identity.Check, before reading.
func (r *Root) Open(rel string) (*os.File, error) {
	fd, err := OpenFd(r.fd, rel)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), r.name(rel)), nil
}

// OpenDir opens the directory at rel ("" for the root) to read its
// entries. Not being a directory is ENOTDIR, never a blocking open.
func (r *Root) OpenDir(rel string) (*os.File, error) {
	fd, err := openBeneath(r.fd, rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), r.name(rel)), nil
}

// Lstat returns the lstat of rel: its directories are opened beneath the
// root with no symlink followed, and rel itself, when it is a symlink, is
// described, not followed.
func (r *Root) Lstat(rel string) (fs.FileInfo, error) {
	if err := checkRel(rel); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if rel == "" {
		if err := fstat(r.fd, &st); err != nil {
			return nil, &fs.PathError{Op: "lstat", Path: r.path, Err: err}
		}
		return newInfo(path.Base(r.path), &st), nil
	}
	dir, base := splitRel(rel)
	dfd := r.fd
	if dir != "" {
		fd, err := OpenDirFd(r.fd, dir)
		if err != nil {
			return nil, err
		}
		defer syscall.Close(fd)
		dfd = fd
	}
	if err := Fstatat(dfd, base, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: rel, Err: err}
	}
	return newInfo(base, &st), nil
}

func (r *Root) name(rel string) string {
	if rel == "" {
		return r.path
	}
	return strings.TrimSuffix(r.path, "/") + "/" + rel
}

// OpenFd opens rel beneath the directory dirfd for reading (O_RDONLY,
// O_NONBLOCK, O_CLOEXEC) with no symlink followed. It is the raw form of
// Root.Open for readers that keep a directory's descriptor and spare the
// cost of an *os.File per file; the caller closes the descriptor.
func OpenFd(dirfd int, rel string) (int, error) {
	return openBeneath(dirfd, rel, unix.O_RDONLY|unix.O_NONBLOCK)
}

// OpenDirFd opens the directory rel beneath dirfd, with no symlink
// followed, as a descriptor that only anchors further lookups (O_PATH on
// Linux: that needs search permission on the directory, not read
// permission). The caller closes it.
func OpenDirFd(dirfd int, rel string) (int, error) {
	return openBeneath(dirfd, rel, dirFlags|unix.O_DIRECTORY)
}

// CheckFd fstats fd and compares it with want (see Identity.Check).
func CheckFd(fd int, name string, want Identity) error {
	var st unix.Stat_t
	if err := fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return want.Check(name, newInfo(name, &st))
	}
	return want.compare(name, Identity{Dev: uint64(st.Dev), Ino: uint64(st.Ino), Size: st.Size})
}

// Fstatat lstats name in the directory dirfd (AT_SYMLINK_NOFOLLOW),
// retrying on EINTR.
func Fstatat(dirfd int, name string, st *unix.Stat_t) error {
	_, err := retry(func() (int, error) { return 0, unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW) })
	return err
}

// LstatAt lstats name in the directory dirfd, as an fs.FileInfo built the
// way os.Lstat builds its own (Sys included): a directory's listing stats
// its entries relative to the descriptor it was read from, so none of them
// is looked up again by a path that may have changed since.
func LstatAt(dirfd int, name string) (fs.FileInfo, error) {
	var st unix.Stat_t
	if err := Fstatat(dirfd, name, &st); err != nil {
		return nil, err
	}
	return newInfo(name, &st), nil
}

func fstat(fd int, st *unix.Stat_t) error {
	_, err := retry(func() (int, error) { return 0, unix.Fstat(fd, st) })
	return err
}

// openBeneath opens rel beneath dirfd with flags (O_CLOEXEC added) and no
// symlink followed on the way: through openat2 where the kernel has it,
// else one component at a time.
func openBeneath(dirfd int, rel string, flags int) (int, error) {
	if err := checkRel(rel); err != nil {
		return -1, err
	}
	if rel == "" {
		rel = "."
	}
	// Not O_NOFOLLOW for openat2: RESOLVE_NO_SYMLINKS covers the last
	// component too, and answers ELOOP where O_NOFOLLOW with O_DIRECTORY
	// would answer ENOTDIR.
	flags |= unix.O_CLOEXEC
	fd, err := openat2(dirfd, rel, flags)
	if err == errNoOpenat2 {
		fd, err = walk(dirfd, rel, flags|unix.O_NOFOLLOW)
	}
	if err != nil {
		return -1, pathErr(rel, err)
	}
	return fd, nil
}

// walk opens rel beneath dirfd one component at a time, each directory
// with O_NOFOLLOW|O_DIRECTORY, so a symlink anywhere stops it. rel is
// clean (checkRel), so no component climbs out.
func walk(dirfd int, rel string, flags int) (int, error) {
	cur := dirfd
	defer func() {
		if cur != dirfd {
			syscall.Close(cur)
		}
	}()
	for {
		comp, rest, more := strings.Cut(rel, "/")
		if !more {
			fd, err := retry(func() (int, error) { return unix.Openat(cur, comp, flags, 0) })
			if err != nil {
				return -1, symlinkOr(cur, comp, err)
			}
			return fd, nil
		}
		fd, err := retry(func() (int, error) {
			return unix.Openat(cur, comp, dirFlags|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		})
		if err != nil {
			return -1, symlinkOr(cur, comp, err)
		}
		if cur != dirfd {
			syscall.Close(cur)
		}
		cur, rel = fd, rest
	}
}

// symlinkOr tells a symlink from other causes of ELOOP and ENOTDIR, which
// is what O_NOFOLLOW (with O_DIRECTORY or O_PATH) answers for one.
func symlinkOr(dirfd int, name string, err error) error {
	if err != unix.ELOOP && err != unix.ENOTDIR {
		return err
	}
	var st unix.Stat_t
	if Fstatat(dirfd, name, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.ELOOP
	}
	return err
}

// pathErr names rel in err and maps the kernel's answers to this
// package's errors: ELOOP is a symlink on the way (RESOLVE_NO_SYMLINKS,
// O_NOFOLLOW), EXDEV an escape (RESOLVE_BENEATH).
func pathErr(rel string, err error) error {
	switch err {
	case unix.ELOOP:
		err = symlinkErr{}
	case unix.EXDEV:
		err = escapeErr{}
	}
	return &fs.PathError{Op: "open", Path: rel, Err: err}
}

// errNoOpenat2 is openat2's answer when it is not to be used.
var errNoOpenat2 = errors.New("openat2 not used")

// symlinkErr is ErrSymlink that is also ELOOP, for callers that test the
// errno.
type symlinkErr struct{}

func (symlinkErr) Error() string { return ErrSymlink.Error() }
func (symlinkErr) Is(target error) bool {
	return target == ErrSymlink || target == syscall.ELOOP
}

type escapeErr struct{}

func (escapeErr) Error() string { return ErrEscape.Error() }
func (escapeErr) Is(target error) bool {
	return target == ErrEscape || target == syscall.EXDEV
}

func splitRel(rel string) (dir, base string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func devIno(fi fs.FileInfo) (dev, ino uint64, ok bool) {
	switch st := fi.Sys().(type) {
	case *syscall.Stat_t:
		return uint64(st.Dev), uint64(st.Ino), true
	case *unix.Stat_t:
		return uint64(st.Dev), uint64(st.Ino), true
	}
	return 0, 0, false
}

// info is the fs.FileInfo of a stat made here.
type info struct {
	name string
	st   unix.Stat_t
	sys  any
}

func newInfo(name string, st *unix.Stat_t) *info {
	fi := &info{name: name, st: *st}
	fi.sys = sysStat(&fi.st)
	return fi
}

func (fi *info) Name() string       { return fi.name }
func (fi *info) Size() int64        { return fi.st.Size }
func (fi *info) ModTime() time.Time { return time.Unix(fi.st.Mtim.Unix()) }
func (fi *info) IsDir() bool        { return fi.Mode().IsDir() }

// Sys returns the stat as os.Lstat's FileInfo does where it can (see
// sysStat), so code reading the device, inode or times of either works.
func (fi *info) Sys() any { return fi.sys }

func (fi *info) Mode() fs.FileMode {
	m := fs.FileMode(fi.st.Mode & 0o777)
	switch uint32(fi.st.Mode) & syscall.S_IFMT {
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
