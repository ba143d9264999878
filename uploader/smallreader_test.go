//go:build unix

package uploader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
)

// readWithin runs rd.read and fails the test if it blocks: a FIFO in a
// file's place must never hang a job.
func readWithin(t *testing.T, rd *smallReader, path string, size, limit int64) ([]byte, error) {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	done := make(chan res, 1)
	go func() {
		b, err := rd.read(path, size, limit)
		done <- res{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("read of %s blocked", path)
		return nil, nil
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSmallReader: whatever happened to a file between the scan (which
// told its size) and the read, the reader returns its content now, or an
// error naming it, or errGrew when it no longer fits a bulk write. Each
// case first reads a sibling, so the directory is the one kept open.
func TestSmallReader(t *testing.T) {
	notRegular := func(t *testing.T, path string, b []byte, err error) {
		if err == nil || !strings.Contains(err.Error(), "not a regular file") || !strings.Contains(err.Error(), path) {
			t.Errorf("got %q, %v; want a not-a-regular-file error naming %s", b, err, path)
		}
	}
	notExist := func(t *testing.T, path string, b []byte, err error) {
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("got %q, %v; want ErrNotExist naming %s", b, err, path)
		}
	}
	grew := func(t *testing.T, path string, b []byte, err error) {
		if !errors.Is(err, errGrew) {
			t.Errorf("got %q, %v; want errGrew", b, err)
		}
	}
	content := func(want string) func(*testing.T, string, []byte, error) {
		return func(t *testing.T, path string, b []byte, err error) {
			if err != nil || string(b) != want {
				t.Errorf("got %q, %v; want %q", b, err, want)
			}
		}
	}
	for _, tc := range []struct {
		name string
		// setup makes dir/f what it is at read time and returns the size
		// the scan found.
		setup func(t *testing.T, dir, f string) int64
		limit int64
		check func(t *testing.T, path string, b []byte, err error)
	}{
		{"unchanged", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "hello"); return 5 }, 64, content("hello")},
		{"at the limit", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "12345678"); return 8 }, 8, content("12345678")},
		{"grew by one byte", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "hello!"); return 5 }, 64, content("hello!")},
		{"grew, still under the limit", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "hello, world"); return 5 }, 64, content("hello, world")},
		{"grew over the limit", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "hello, world"); return 5 }, 8, grew},
		{"scanned over the limit", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "hello, world"); return 12 }, 8, grew},
		{"shrank", func(t *testing.T, dir, f string) int64 { writeFile(t, f, "hi"); return 5 }, 64, content("hi")},
		{"emptied", func(t *testing.T, dir, f string) int64 { writeFile(t, f, ""); return 5 }, 64, content("")},
		{"empty as scanned", func(t *testing.T, dir, f string) int64 { writeFile(t, f, ""); return 0 }, 64, content("")},
		{"replaced by a FIFO", func(t *testing.T, dir, f string) int64 {
			if err := syscall.Mkfifo(f, 0o644); err != nil {
				t.Fatal(err)
			}
			return 5
		}, 64, notRegular},
		{"replaced by an empty FIFO, scanned empty", func(t *testing.T, dir, f string) int64 {
			if err := syscall.Mkfifo(f, 0o644); err != nil {
				t.Fatal(err)
			}
			return 0
		}, 64, notRegular},
		{"replaced by a FIFO holding fewer bytes", func(t *testing.T, dir, f string) int64 {
			if err := syscall.Mkfifo(f, 0o644); err != nil {
				t.Fatal(err)
			}
			// O_RDWR opens a FIFO without waiting for a reader.
			w, err := os.OpenFile(f, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { w.Close() })
			if _, err := w.WriteString("abc"); err != nil {
				t.Fatal(err)
			}
			return 5
		}, 64, notRegular},
		{"replaced by a directory", func(t *testing.T, dir, f string) int64 {
			if err := os.Mkdir(f, 0o755); err != nil {
				t.Fatal(err)
			}
			return 5
		}, 64, notRegular},
		{"deleted", func(t *testing.T, dir, f string) int64 { return 5 }, 64, notExist},
		{"directory deleted after it was opened", func(t *testing.T, dir, f string) int64 {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			return 5
		}, 64, notExist},
		{"directory replaced by a file", func(t *testing.T, dir, f string) int64 {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			writeFile(t, dir, "not a directory")
			return 5
		}, 64, func(t *testing.T, path string, b []byte, err error) {
			if !errors.Is(err, syscall.ENOTDIR) || !strings.Contains(err.Error(), path) {
				t.Errorf("got %q, %v; want ENOTDIR naming %s", b, err, path)
			}
		}},
		{"directory swapped for a new one holding the file", func(t *testing.T, dir, f string) int64 {
			if err := os.Rename(dir, dir+".old"); err != nil {
				t.Fatal(err)
			}
			writeFile(t, f, "new one")
			return 7
		}, 64, content("new one")},
		{"symlink to a file in another directory", func(t *testing.T, dir, f string) int64 {
			target := filepath.Join(filepath.Dir(dir), "elsewhere", "target")
			writeFile(t, target, "target!")
			if err := os.Symlink("../elsewhere/target", f); err != nil {
				t.Fatal(err)
			}
			return 7
		}, 64, content("target!")},
		{"dangling symlink", func(t *testing.T, dir, f string) int64 {
			if err := os.Symlink("../nowhere/target", f); err != nil {
				t.Fatal(err)
			}
			return 7
		}, 64, notExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "d")
			writeFile(t, filepath.Join(dir, "warm"), "sibling")
			rd := newSmallReader()
			defer rd.close()
			if b, err := readWithin(t, rd, filepath.Join(dir, "warm"), 7, 64); err != nil || string(b) != "sibling" {
				t.Fatalf("sibling: %q, %v", b, err)
			}
			f := filepath.Join(dir, "f")
			size := tc.setup(t, dir, f)
			b, err := readWithin(t, rd, f, size, tc.limit)
			tc.check(t, f, b, err)
		})
	}
}

// Files of several directories, in and out of order, each read with the
// right directory; paths through a symlinked directory too.
func TestSmallReaderSwitchesDirectories(t *testing.T) {
	root := t.TempDir()
	var paths []string
	for _, rel := range []string{"a/1", "a/2", "a/b/1", "a/3", "c/1", "a/4", "c/2", "c/1", "top"} {
		p := filepath.Join(root, rel)
		writeFile(t, p, "content of "+rel)
		paths = append(paths, p)
	}
	if err := os.Symlink("a", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	paths = append(paths, filepath.Join(root, "link", "2"), filepath.Join(root, "a", "2"))
	rd := newSmallReader()
	defer rd.close()
	for _, p := range paths {
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readWithin(t, rd, p, int64(len(want)), 64)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %q, %v; want %q", p, got, err, want)
		}
	}
}

// asNobody reruns the calling test in a child process as user nobody when
// the tests run as root, which reads files whatever their mode, and reports
// whether it did: the child's verdict is then the test's.
func asNobody(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return false
	}
	const nobody = 65534
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The test binary's own directory is private to the test run.
	bin := filepath.Join(dir, "uploader.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")) {
		t.Fatalf("as nobody, the test did not pass:\n%s", out)
	}
	t.Logf("ran as nobody:\n%s", out)
	return true
}

// An unreadable file, or one in a directory that cannot be searched (also
// after the reader opened that directory), fails with the permission error
// naming it.
func TestSmallReaderUnreadable(t *testing.T) {
	if asNobody(t) {
		return
	}
	root := t.TempDir()
	dir := filepath.Join(root, "d")
	warm, secret := filepath.Join(dir, "warm"), filepath.Join(dir, "secret")
	writeFile(t, warm, "sibling")
	writeFile(t, secret, "secret")
	if err := os.Chmod(secret, 0); err != nil {
		t.Fatal(err)
	}
	denied := func(t *testing.T, path string, b []byte, err error) {
		t.Helper()
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), path) {
			t.Errorf("got %q, %v; want ErrPermission naming %s", b, err, path)
		}
	}
	rd := newSmallReader()
	defer rd.close()
	if b, err := readWithin(t, rd, warm, 7, 64); err != nil || string(b) != "sibling" {
		t.Fatalf("sibling: %q, %v", b, err)
	}
	b, err := readWithin(t, rd, secret, 6, 64)
	denied(t, secret, b, err)

	// The reader holds dir open; taking its search permission away still
	// denies what is in it, as it would by absolute path.
	if err := os.Chmod(dir, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	b, err = readWithin(t, rd, warm, 7, 64)
	denied(t, warm, b, err)
	b, err = readWithin(t, newSmallReader(), warm, 7, 64)
	denied(t, warm, b, err)
}

// In a bulk batch, an unreadable file is held back alone (its key neither
// written nor deleted, as when the watcher finds it unreadable); its
// neighbours in the same directory are written.
func TestBulkUnreadableHeldBackAlone(t *testing.T) {
	if asNobody(t) {
		return
	}
	tr := newTree(t)
	states := []desired.State{tr.write("d/a", "a"), tr.write("d/secret", "s"), tr.write("d/z", "z")}
	if err := os.Chmod(filepath.Join(tr.root, "d", "secret"), 0); err != nil {
		t.Fatal(err)
	}
	kv := newFakeKV(t)
	e, _ := newTestEngine(t, kv, newMemStore(), nil)
	rep, err := e.SyncOnce(context.Background(), complete(states...))
	if !errors.Is(err, ErrSyncIncomplete) || rep.HeldBack != 1 || rep.Failed != 0 || rep.Written != 2 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if len(rep.Failures) != 1 || !errors.Is(rep.Failures[0].Err, fs.ErrPermission) {
		t.Errorf("failures %+v; want the permission error", rep.Failures)
	}
	if _, ok := kv.get(testPrefix + "d/secret"); ok {
		t.Error("unreadable file reached KV")
	}
	mustContent(t, kv, testPrefix+"d/a", "a")
	mustContent(t, kv, testPrefix+"d/z", "z")
}

// While running, an unreadable file the watcher did not read (its key has
// no record) is held back once, not retried every RetryBackoff; its next
// change queues it again.
func TestUnreadableHeldBackNotRetried(t *testing.T) {
	if asNobody(t) {
		return
	}
	tr := newTree(t)
	st := tr.write("secret", "s")
	path := filepath.Join(tr.root, "secret")
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	kv := newFakeKV(t)
	e, logs := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.RetryBackoff = time.Millisecond })
	running(t, e)
	e.Changed([]desired.State{st})
	waitIdle(t, e) // a retry every millisecond would never be idle
	if n := strings.Count(logs.String(), "holding back unreadable file"); n != 1 {
		t.Fatalf("held back %d times, want once:\n%s", n, logs)
	}
	if _, ok := kv.get(st.Key); ok || kv.writes() != 0 {
		t.Fatalf("unreadable file reached KV: %v", kv.calls)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	e.Changed([]desired.State{tr.write("secret", "readable now")})
	waitIdle(t, e)
	mustContent(t, kv, st.Key, "readable now")
}

// BenchmarkReadBatch reads one bulk batch's files (5,000 of 1 KiB, in key
// order, in the two-level layout of the bench trees): each by its absolute
// path (readSmall), or through smallReader.
func BenchmarkReadBatch(b *testing.B) {
	root := b.TempDir()
	content := bytes.Repeat([]byte("k"), 1024)
	var paths []string
	for i := range 5000 {
		p := filepath.Join(root, fmt.Sprintf("d%02d", i/320), fmt.Sprintf("e%02d", i/10%32), fmt.Sprintf("f%06d.txt", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, p)
	}
	slices.Sort(paths)
	b.Run("path", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, p := range paths {
				if d, err := readSmall(p, 1<<20); err != nil || len(d) != len(content) {
					b.Fatal(len(d), err)
				}
			}
		}
	})
	b.Run("smallReader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rd := newSmallReader()
			for _, p := range paths {
				if d, err := rd.read(p, int64(len(content)), 1<<20); err != nil || len(d) != len(content) {
					b.Fatal(len(d), err)
				}
			}
			rd.close()
		}
	})
}
