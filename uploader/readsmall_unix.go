//go:build unix

package uploader

import (
	"fmt"
	"io/fs"
	"syscall"
)

// readSmall reads the whole file at path, refusing more than limit bytes.
//
// It runs for every file of a bulk write, so it goes straight to the
// system calls: an *os.File costs an epoll registration attempt, a
// finalizer and a FileInfo, about half of the time of reading a 1 KiB file.
// O_NONBLOCK keeps a FIFO that took the file's place since it was checked
// from blocking the job.
func readSmall(path string, limit int64) ([]byte, error) {
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	return readCareful(fd, path, limit)
}

// readCareful reads the whole content of fd, open on path and not read
// from yet: fstat says whether it is a regular file and how large it is,
// and a probe past that size tells whether it grew meanwhile (errGrew, as
// when it is over limit: the caller streams it alone).
func readCareful(fd int, path string, limit int64) ([]byte, error) {
	var st syscall.Stat_t
	if _, err := retryEINTR(func() (int, error) { return 0, syscall.Fstat(fd, &st) }); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, fmt.Errorf("%s: not a regular file (mode %o)", path, st.Mode&syscall.S_IFMT)
	}
	size := int64(st.Size)
	if size > limit {
		return nil, errGrew
	}
	buf := make([]byte, size)
	n := 0
	for n < len(buf) {
		m, err := retryEINTR(func() (int, error) { return syscall.Read(fd, buf[n:]) })
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			return buf[:n], nil // it shrank since fstat: what we read is the content now
		}
		n += m
	}
	var probe [1]byte
	if m, _ := retryEINTR(func() (int, error) { return syscall.Read(fd, probe[:]) }); m > 0 {
		return nil, errGrew
	}
	return buf, nil
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
