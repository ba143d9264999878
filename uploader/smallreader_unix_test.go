//go:build unix

package uploader

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
)

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A bulk batch spanning many directories, with files that vanished or
// became a FIFO or a directory, leaves no descriptor open: neither a
// file's nor the directory the reader kept.
func TestBulkReadLeaksNoDescriptor(t *testing.T) {
	tr := newTree(t)
	var states []desired.State
	for i := range 300 {
		states = append(states, tr.write(fmt.Sprintf("d%d/e%d/f%03d", i%7, i%3, i), fmt.Sprintf("content %d", i)))
	}
	// Files that change after the scan, among the others.
	gone := tr.write("d1/e1/gone", "gone")
	fifo := tr.write("d2/e2/fifo", "fifo")
	dir := tr.write("d3/e0/dir", "dir")
	grew := tr.write("d4/e1/grew", "grew")
	for _, p := range []string{gone.Path, fifo.Path, dir.Path} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(fifo.Path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, grew.Path, "grew since the scan")
	states = append(states, gone, fifo, dir, grew)

	kv := newFakeKV(t)
	e, _ := newTestEngine(t, kv, newMemStore(), nil)
	openFDs(t) // the first ReadDir may set up the runtime's poller
	before := openFDs(t)
	rep, _ := e.SyncOnce(context.Background(), complete(states...))
	if rep.Written != 300 || rep.HeldBack != 3 {
		t.Errorf("written %d, held back %d; want the 300 files written and the FIFO, the directory and the one that grew held back: %+v", rep.Written, rep.HeldBack, rep)
	}
	if _, ok := kv.get(grew.Key); ok {
		t.Error("a file that changed since the scan was written")
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after the sync, %d before", after, before)
	}

	// The reader alone: every outcome closes the file; close closes the
	// root and the directory.
	rd := newSmallReader()
	for _, st := range states {
		_, _ = rd.read(st, 1<<20)
	}
	missing := states[0]
	missing.Rel, missing.Path = "d0/e0/missing", filepath.Join(tr.root, "d0", "e0", "missing")
	_, _ = rd.read(missing, 1<<20)
	if n := openFDs(t); n != before+2 {
		t.Errorf("%d descriptors open with the reader holding its root and directory, want %d", n, before+2)
	}
	rd.close()
	if n := openFDs(t); n != before {
		t.Errorf("%d descriptors open after close, want %d", n, before)
	}
}
