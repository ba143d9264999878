//go:build linux

package watcher

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kvsync/kvsync/internal/beneath"
)

// An entry's stat taken relative to its directory says what os.Lstat says,
// Sys included, so the caches' file identities match either way.
func TestReadDirStatMatchesLstat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write(t, dir, "file.txt", "content")
	write(t, dir, "file.txt.meta.json", `{}`)
	write(t, dir, "orphan.meta.json", `{}`)
	write(t, dir, "sub/x", "x")
	if err := os.Chmod(filepath.Join(dir, "file.txt"), 0o4750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("file.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := net.Listen("unix", filepath.Join(dir, "sock")); err == nil {
		defer l.Close()
	}
	root, err := beneath.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	entries, err := readDirStat(context.Background(), root, "", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(entries), len(want))
	}
	for i, e := range entries {
		if e.name != want[i].Name() || e.dir != want[i].IsDir() {
			t.Fatalf("entry %d: %q dir=%v, want %q dir=%v", i, e.name, e.dir, want[i].Name(), want[i].IsDir())
		}
		stated := !e.dir && e.name != "orphan.meta.json"
		if (e.info != nil) != stated || e.err != nil {
			t.Fatalf("%s: info %v, err %v; want a stat: %v", e.name, e.info, e.err, stated)
		}
		if !stated {
			continue
		}
		lst, err := os.Lstat(filepath.Join(dir, e.name))
		if err != nil {
			t.Fatal(err)
		}
		fi := e.info
		if fi.Name() != lst.Name() || fi.Size() != lst.Size() || fi.Mode() != lst.Mode() ||
			!fi.ModTime().Equal(lst.ModTime()) || fi.IsDir() != lst.IsDir() {
			t.Errorf("%s: got %s %d %v %v, os.Lstat says %s %d %v %v", e.name,
				fi.Name(), fi.Size(), fi.Mode(), fi.ModTime(), lst.Name(), lst.Size(), lst.Mode(), lst.ModTime())
		}
		gotID, ok1 := fileIDOf(fi)
		wantID, ok2 := fileIDOf(lst)
		if !ok1 || !ok2 || gotID != wantID {
			t.Errorf("%s: identity %+v (%v), os.Lstat's %+v (%v)", e.name, gotID, ok1, wantID, ok2)
		}
		if *fi.Sys().(*syscall.Stat_t) != *lst.Sys().(*syscall.Stat_t) {
			t.Errorf("%s: Sys %+v, os.Lstat's %+v", e.name, fi.Sys(), lst.Sys())
		}
	}
}

// Listing something that is no longer a directory fails as gone, at once,
// even when it is a FIFO nobody writes to.
func TestReadDirStatNotDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write(t, dir, "f", "f")
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := beneath.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, name := range []string{"f", "fifo", "missing"} {
		if _, err := readDirStat(context.Background(), root, name, filepath.Join(dir, name), nil); !isGone(err) {
			t.Errorf("%s: err %v, want ENOTDIR or ENOENT", name, err)
		}
	}
}
