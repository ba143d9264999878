//go:build unix

package uploader

import (
	"io/fs"
	"strings"
	"syscall"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// smallReader reads the files of one bulk batch. A batch comes in key
// order, so consecutive files mostly share a directory: the reader keeps
// the root and the last directory open, the directory opened beneath the
// root, and opens each file beneath that directory, which spares the
// kernel the walk of every component of the path. It goes straight to
// the system calls: an *os.File costs an epoll registration attempt, a
// finalizer and a FileInfo, a large share of the time of reading a small
// file (bench/README.md, "Earlier runs"). It is used by one job at a time;
// close releases the descriptors.
//
// A directory kept open may have been moved (out of the tree, too) since
// it was opened: that is harmless, because what is read is decided by the
// identity check of each file, not by where its directory is now.
type smallReader struct {
	root  *beneath.Root // nil when none is open
	dir   string        // rel of dirfd beneath root
	dirfd int           // -1 when none is open
	// now is the clock that tells settled file times (desired.RacyWindow).
	now func() time.Time
	// stamp vouches for the content the last read returned: the file's
	// stat from before the read, settled; zero when it cannot.
	stamp desired.Stamp
}

func newSmallReader() *smallReader { return &smallReader{dirfd: -1, now: time.Now} }

// read returns the content of st's file, refusing more than limit bytes
// (errGrew: the caller streams it alone). The descriptor is fstatted
// before anything is read, so a FIFO, a device or a decoy that took the
// file's place is never read: it is not the file the scan saw
// (beneath.ErrChanged), nor is a file whose length differs from it.
func (r *smallReader) read(st desired.State, limit int64) ([]byte, error) {
	size := st.File.Size
	if size > limit {
		return nil, errGrew
	}
	dirfd, base, err := r.open(st)
	if err != nil {
		return nil, named(err, st.Path)
	}
	fd, err := beneath.OpenFd(dirfd, base)
	if err != nil {
		return nil, named(err, st.Path)
	}
	defer syscall.Close(fd)
	r.stamp = desired.Stamp{}
	// One fstat both checks that the descriptor is the file the scan saw
	// and stamps it (a system call less per file of a batch); anything
	// else goes to beneath.CheckFd, which says what it is.
	var sst syscall.Stat_t
	if _, err := retryEINTR(func() (int, error) { return 0, syscall.Fstat(fd, &sst) }); err != nil ||
		sst.Mode&syscall.S_IFMT != syscall.S_IFREG ||
		(beneath.Identity{Dev: uint64(sst.Dev), Ino: uint64(sst.Ino), Size: sst.Size}) != st.File {
		if err := beneath.CheckFd(fd, st.Path, st.File); err != nil {
			return nil, err
		}
		// It changed between the two looks: not the file the scan saw.
		return nil, &fs.PathError{Op: "fstat", Path: st.Path, Err: beneath.ErrChanged}
	}
	before, stamped := desired.StampOfSys(&sst)
	// One byte more than the size: a read that fills it proves the file
	// longer than the scan saw. A read of a regular file stops short only
	// at its end, so one that yields exactly the size, short of the
	// buffer, proves the length without another read to see the end; a
	// file system that returns less (a stream-like FUSE file) is read on
	// until it says end of file.
	buf := make([]byte, size+1)
	n := 0
	for n < len(buf) {
		m, err := retryEINTR(func() (int, error) { return syscall.Read(fd, buf[n:]) })
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: st.Path, Err: err}
		}
		if m == 0 {
			break
		}
		if n += m; int64(n) == size {
			break
		}
	}
	if int64(n) != size {
		return nil, errShort(st, n)
	}
	// Stamped, the record of this write lets the next scan, in a new
	// process too, know the file unchanged without reading it. The stamp
	// taken before the read is enough, with no second fstat after it: a
	// write during or after the read sets the file's ctime to the time of
	// that write, and a settled stamp's ctime is older than RacyWindow,
	// so such a write leaves a stamp the next scan cannot match, and it
	// reads the file again. (A second fstat was about 4 % of the CPU of a
	// first publish of a million small files.)
	if stamped && before.Settled(r.now()) {
		r.stamp = before
	}
	return buf[:n], nil
}

// open returns the descriptor of the directory of st's file, reusing the
// one kept open when it is the same, and the file's name in it.
func (r *smallReader) open(st desired.State) (dirfd int, base string, err error) {
	if r.root == nil || r.root.Path() != st.Root {
		r.close()
		if r.root, err = beneath.OpenRoot(st.Root); err != nil {
			return -1, "", err
		}
	}
	dir, base := "", st.Rel
	if i := strings.LastIndexByte(st.Rel, '/'); i >= 0 {
		dir, base = st.Rel[:i], st.Rel[i+1:]
	}
	if dir == "" {
		return r.root.Fd(), base, nil
	}
	if r.dirfd >= 0 && r.dir == dir {
		return r.dirfd, base, nil
	}
	if r.dirfd >= 0 {
		syscall.Close(r.dirfd)
		r.dir, r.dirfd = "", -1
	}
	fd, err := beneath.OpenDirFd(r.root.Fd(), dir)
	if err != nil {
		return -1, "", err
	}
	r.dir, r.dirfd = dir, fd
	return fd, base, nil
}

// close releases the descriptors kept open, if any. It may be called again.
func (r *smallReader) close() {
	if r.dirfd >= 0 {
		syscall.Close(r.dirfd)
	}
	if r.root != nil {
		r.root.Close()
	}
	r.root, r.dir, r.dirfd = nil, "", -1
}

// named makes err, a lookup's, name the file's path rather than the part
// of it that was looked up.
func named(err error, path string) error {
	if pe, ok := err.(*fs.PathError); ok {
		return &fs.PathError{Op: pe.Op, Path: path, Err: pe.Err}
	}
	return err
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
