//go:build unix

package uploader

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A FIFO that took a file's place since it was checked fails the read
// rather than blocking the job forever.
func TestReadSmallFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSmall(fifo, 10); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("fifo: %v", err)
	}
}
