package uploader

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// smallReader reads the files of one bulk batch. A batch comes in key
// order, so consecutive files mostly share a directory: the reader keeps
// the last directory open and opens each file relative to it, which spares
// the kernel the walk of every component of the absolute path. It is used
// by one job at a time; close releases the directory.
//
// A file opened through a directory kept open is looked up in that
// directory even if the directory has since been renamed or replaced (a
// file it no longer has is looked up again by its path); the batch reads
// its files within moments, and a later change of the tree is the
// watcher's to report, as for any change after a read.
type smallReader struct {
	dir   string // of dirfd
	dirfd int    // -1 when none is open
}

func newSmallReader() *smallReader { return &smallReader{dirfd: -1} }

// read returns the content of the file at path (absolute), refusing more
// than limit bytes (errGrew, as readSmall does). size is what the scan
// found: a read of exactly size bytes into a buffer of size+1 proves the
// file complete (a regular file reads in full unless at its end), which
// spares the fstat and the probe read. Anything else (short, longer, an
// error such as EAGAIN from a FIFO or EISDIR) gets the careful read of
// readSmall. O_NONBLOCK keeps a FIFO from blocking the job. The price of
// sparing the fstat: a FIFO that took the file's place since the scan is
// read before it is recognised, so bytes a process wrote into it are
// consumed, and exactly size of them would be taken for the file's content.
func (r *smallReader) read(path string, size, limit int64) ([]byte, error) {
	i := strings.LastIndexByte(path, '/')
	if size <= 0 || size > limit || i < 0 || i == len(path)-1 {
		// An empty read cannot tell an empty file from a FIFO without a
		// writer, which also reads as end of file.
		return readSmall(path, limit)
	}
	dir := path[:i]
	if i == 0 {
		dir = "/"
	}
	dirfd, err := r.open(dir)
	if err != nil {
		// The careful path reports the failure with the file's own path.
		return readSmall(path, limit)
	}
	base := path[i+1:]
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Openat(dirfd, base, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	})
	if err != nil {
		// Rare: opening by the whole path gives the error it always gave,
		// also when the directory kept open has since gone (ENOENT here,
		// perhaps ENOTDIR or the file in a new directory there).
		return readSmall(path, limit)
	}
	defer syscall.Close(fd)
	buf := make([]byte, size+1)
	n, err := retryEINTR(func() (int, error) { return syscall.Read(fd, buf) })
	switch {
	case err == nil && int64(n) == size:
		return buf[:n], nil
	case n <= 0:
		// Nothing read (an error, or the file is now empty): the careful
		// read can take over the descriptor.
		return readCareful(fd, path, limit)
	}
	// Bytes were read, fewer or more than the scan found: the careful read
	// starts again from the path. pread could restart on this descriptor,
	// but not every regular file supports it (a stream-like FUSE file).
	return readSmall(path, limit)
}

// open returns a descriptor of dir, reusing the one kept open when it is
// the same directory. O_PATH: the descriptor only anchors lookups, which
// needs no read permission on the directory, only search permission, the
// same as opening the file by its absolute path.
func (r *smallReader) open(dir string) (int, error) {
	if r.dirfd >= 0 && r.dir == dir {
		return r.dirfd, nil
	}
	r.close()
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Open(dir, unix.O_PATH|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return -1, err
	}
	r.dir, r.dirfd = dir, fd
	return fd, nil
}

// close releases the directory kept open, if any. It may be called again.
func (r *smallReader) close() {
	if r.dirfd >= 0 {
		syscall.Close(r.dirfd)
	}
	r.dir, r.dirfd = "", -1
}
