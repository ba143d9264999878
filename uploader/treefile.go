package uploader

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
)

// A key's bytes are read from its state's Rel beneath its Root, with
// package beneath: no symlink is followed on the way, and the descriptor
// opened must have the identity the scan saw (st.File) before a byte of it
// is read. The scan checked the path; only the descriptor is what is sent,
// and between the two anything in the tree may have been swapped (a file
// or a directory for a symlink to a secret outside it, a decoy of the
// same size). Such a file is not the one scanned: it is not published as
// it stands (see changedSinceScan).

// openTree opens the file of st and checks it is the one the scan saw.
func openTree(st desired.State) (*os.File, error) {
	root, err := beneath.OpenRoot(st.Root)
	if err != nil {
		return nil, err
	}
	f, err := root.Open(st.Rel)
	root.Close()
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = st.File.Check(st.Path, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openWrite opens the file of a streamed write (openTree), or fails as
// the test's openFault says.
func (e *Engine) openWrite(st desired.State) (*os.File, error) {
	if e.openFault != nil {
		if err := e.openFault(st); err != nil {
			return nil, err
		}
	}
	return openTree(st)
}

// readBatch reads the file of a bulk write with rd, refusing more than
// BulkThreshold bytes, or fails as the test's openFault says.
func (e *Engine) readBatch(rd *smallReader, st desired.State) ([]byte, error) {
	if e.openFault != nil && st.File.Size <= e.o.BulkThreshold {
		if err := e.openFault(st); err != nil {
			return nil, err
		}
	}
	return rd.read(st, e.o.BulkThreshold)
}

// changedSinceScan reports whether err says the file of a state is not
// what the scan saw: another file (ErrChanged), a symlink on its way now
// (ErrSymlink), or a path that is no longer beneath the root (ErrEscape).
// Only a new scan can say what the key should hold then.
func changedSinceScan(err error) bool {
	return errors.Is(err, beneath.ErrChanged) || errors.Is(err, beneath.ErrSymlink) || errors.Is(err, beneath.ErrEscape)
}

// treeValue is the value of a streamed write: the file of st, first as
// opened and checked before the request's intent mark, then, for each
// further attempt, opened and checked again.
type treeValue struct {
	st    desired.State
	mu    sync.Mutex
	first *os.File
}

func newTreeValue(st desired.State, f *os.File) (*treeValue, kvapi.Value) {
	tv := &treeValue{st: st, first: f}
	return tv, kvapi.Sized(st.Path, st.File.Size, tv.open)
}

func (tv *treeValue) open() (io.ReadCloser, error) {
	tv.mu.Lock()
	f := tv.first
	tv.first = nil
	tv.mu.Unlock()
	if f != nil {
		return f, nil
	}
	return openTree(tv.st)
}

// close closes the first descriptor if no attempt took it.
func (tv *treeValue) close() {
	tv.mu.Lock()
	f := tv.first
	tv.first = nil
	tv.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// errShort is a read of fewer or more bytes than the checked size: the
// file is being written in place.
func errShort(st desired.State, n int) error {
	return fmt.Errorf("%w: %s: read %d bytes, the scan saw %d", beneath.ErrChanged, st.Path, n, st.File.Size)
}
