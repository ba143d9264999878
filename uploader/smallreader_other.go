//go:build !unix

package uploader

import (
	"io"

	"github.com/kvsync/kvsync/internal/desired"
)

// smallReader reads the files of one bulk batch. Without openat each file
// is opened through openTree, its root opened each time.
type smallReader struct {
	// stamp is always zero here: no stamps off Linux (desired.StampOf).
	stamp desired.Stamp
}

func newSmallReader() *smallReader { return &smallReader{} }

// read returns the content of st's file, checked as openTree checks it,
// refusing more than limit bytes (errGrew).
func (r *smallReader) read(st desired.State, limit int64) ([]byte, error) {
	if st.File.Size > limit {
		return nil, errGrew
	}
	f, err := openTree(st)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, st.File.Size+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, err
	}
	if int64(n) != st.File.Size {
		return nil, errShort(st, n)
	}
	return buf[:n], nil
}

// close releases nothing here; it exists for the Unix reader.
func (r *smallReader) close() {}
