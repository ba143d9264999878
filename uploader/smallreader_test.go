//go:build unix

package uploader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// readWithin runs rd.read and fails the test if it blocks: a FIFO in a
// file's place must never hang a job.
func readWithin(t *testing.T, rd *smallReader, st desired.State, limit int64) ([]byte, error) {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	done := make(chan res, 1)
	go func() {
		b, err := rd.read(st, limit)
		done <- res{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("read of %s blocked", st.Path)
		return nil, nil
	}
}

func writeFile(t *testing.T, path string, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replace puts a new file with content at path, as an atomic save does:
// another inode under the same name.
func replace(t *testing.T, path, content string) {
	t.Helper()
	writeFile(t, path+".new", content)
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// TestSmallReader: whatever happened to a file between the scan (which
// pinned its identity) and the read, the reader returns the content of the
// file the scan saw, or an error naming it: beneath.ErrChanged (or
// ErrSymlink) for anything that is not that file with that length, which
// is then never read, or errGrew when it no longer fits a bulk write.
// Each case first reads a sibling, so the directory is the one kept open
// unless the case says otherwise.
func TestSmallReader(t *testing.T) {
	changed := func(t *testing.T, path string, b []byte, err error) {
		t.Helper()
		if !changedSinceScan(err) || !strings.Contains(err.Error(), path) || b != nil {
			t.Errorf("got %q, %v; want a changed-since-the-scan error naming %s", b, err, path)
		}
	}
	notExist := func(t *testing.T, path string, b []byte, err error) {
		t.Helper()
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("got %q, %v; want ErrNotExist naming %s", b, err, path)
		}
	}
	grew := func(t *testing.T, path string, b []byte, err error) {
		t.Helper()
		if !errors.Is(err, errGrew) {
			t.Errorf("got %q, %v; want errGrew", b, err)
		}
	}
	content := func(want string) func(*testing.T, string, []byte, error) {
		return func(t *testing.T, path string, b []byte, err error) {
			t.Helper()
			if err != nil || string(b) != want {
				t.Errorf("got %q, %v; want %q", b, err, want)
			}
		}
	}
	fifo := func(t *testing.T, f string) {
		t.Helper()
		os.Remove(f)
		if err := syscall.Mkfifo(f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		scanned string // the content of dir/f when it is scanned
		// change makes dir/f what it is at read time (outside is a
		// directory beside the root).
		change func(t *testing.T, dir, f, outside string)
		cold   bool // no sibling read first: no directory kept open
		limit  int64
		check  func(t *testing.T, path string, b []byte, err error)
	}{
		{name: "unchanged", scanned: "hello", limit: 64, check: content("hello")},
		{name: "at the limit", scanned: "12345678", limit: 8, check: content("12345678")},
		{name: "scanned over the limit", scanned: "hello, world", limit: 8, check: grew},
		{name: "empty as scanned", scanned: "", limit: 64, check: content("")},
		{name: "grew in place", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) { writeFile(t, f, "hello!") }},
		{name: "shrank in place", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) { writeFile(t, f, "hi") }},
		{name: "emptied", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) { writeFile(t, f, "") }},
		{name: "replaced, same size", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) { replace(t, f, "HELLO") }},
		{name: "replaced by a FIFO", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) { fifo(t, f) }},
		{name: "replaced by an empty FIFO, scanned empty", scanned: "", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) { fifo(t, f) }},
		{name: "replaced by a directory", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) {
				os.Remove(f)
				if err := os.Mkdir(f, 0o755); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "replaced by a symlink to a same-size file outside", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) {
				writeFile(t, filepath.Join(outside, "decoy"), "SECRT")
				os.Remove(f)
				if err := os.Symlink(filepath.Join(outside, "decoy"), f); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "replaced by a symlink to /proc/self/environ", scanned: "hello", limit: 64, check: changed,
			change: func(t *testing.T, dir, f, outside string) {
				os.Remove(f)
				if err := os.Symlink("/proc/self/environ", f); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "deleted", scanned: "hello", limit: 64, check: notExist,
			change: func(t *testing.T, dir, f, outside string) { os.Remove(f) }},
		{name: "directory deleted after it was opened", scanned: "hello", limit: 64, check: notExist,
			change: func(t *testing.T, dir, f, outside string) {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "directory replaced by a file", scanned: "hello", limit: 64, cold: true,
			change: func(t *testing.T, dir, f, outside string) {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "not a directory")
			}, check: func(t *testing.T, path string, b []byte, err error) {
				if !errors.Is(err, syscall.ENOTDIR) || !strings.Contains(err.Error(), path) {
					t.Errorf("got %q, %v; want ENOTDIR naming %s", b, err, path)
				}
			}},
		{name: "directory swapped for a new one holding a same-size file", scanned: "hello", limit: 64, cold: true, check: changed,
			change: func(t *testing.T, dir, f, outside string) {
				if err := os.Rename(dir, dir+".old"); err != nil {
					t.Fatal(err)
				}
				writeFile(t, f, "HELLO")
			}},
		{name: "directory swapped for a symlink to the outside", scanned: "hello", limit: 64, cold: true, check: changed,
			change: func(t *testing.T, dir, f, outside string) {
				writeFile(t, filepath.Join(outside, "f"), "SECRT")
				if err := os.Rename(dir, dir+".old"); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(outside, dir); err != nil {
					t.Fatal(err)
				}
			}},
		// The directory kept open is the one moved aside, which still
		// holds the very file the scan saw: that file is what is read.
		{name: "directory swapped for a symlink after it was opened", scanned: "hello", limit: 64, check: content("hello"),
			change: func(t *testing.T, dir, f, outside string) {
				writeFile(t, filepath.Join(outside, "f"), "SECRT")
				if err := os.Rename(dir, dir+".old"); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(outside, dir); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
			dir := filepath.Join(root, "d")
			writeFile(t, filepath.Join(dir, "warm"), "sibling")
			writeFile(t, filepath.Join(outside, "x"), "x")
			f := filepath.Join(dir, "f")
			writeFile(t, f, tc.scanned)
			st := scanned(t, root, "d/f")
			rd := newSmallReader()
			defer rd.close()
			if !tc.cold {
				if b, err := readWithin(t, rd, scanned(t, root, "d/warm"), 64); err != nil || string(b) != "sibling" {
					t.Fatalf("sibling: %q, %v", b, err)
				}
			}
			if tc.change != nil {
				tc.change(t, dir, f, outside)
			}
			b, err := readWithin(t, rd, st, tc.limit)
			tc.check(t, f, b, err)
		})
	}
}

// A FIFO that took a file's place is recognised before it is read: the
// bytes a process wrote into it are not consumed.
func TestSmallReaderLeavesFIFOUnread(t *testing.T) {
	root := t.TempDir()
	f := filepath.Join(root, "f")
	writeFile(t, f, "abc")
	st := scanned(t, root, "f")
	os.Remove(f)
	if err := syscall.Mkfifo(f, 0o644); err != nil {
		t.Fatal(err)
	}
	// O_RDWR opens a FIFO without waiting for a reader.
	w, err := os.OpenFile(f, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("abc"); err != nil {
		t.Fatal(err)
	}
	rd := newSmallReader()
	defer rd.close()
	if b, err := readWithin(t, rd, st, 64); !changedSinceScan(err) {
		t.Fatalf("got %q, %v; want a changed-since-the-scan error", b, err)
	}
	buf := make([]byte, 3)
	if n, err := w.Read(buf); err != nil || string(buf[:n]) != "abc" {
		t.Fatalf("the FIFO holds %q, %v; want abc still in it", buf[:n], err)
	}
}

// Files of several directories, in and out of order, each read with the
// right directory; a path through a symlinked directory is refused.
func TestSmallReaderSwitchesDirectories(t *testing.T) {
	root := t.TempDir()
	var states []desired.State
	for _, rel := range []string{"a/1", "a/2", "a/b/1", "a/3", "c/1", "a/4", "c/2", "c/1", "top", "a/2"} {
		writeFile(t, filepath.Join(root, rel), "content of "+rel)
		states = append(states, scanned(t, root, rel))
	}
	if err := os.Symlink("a", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	rd := newSmallReader()
	defer rd.close()
	for _, st := range states {
		want, err := os.ReadFile(st.Path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readWithin(t, rd, st, 64)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %q, %v; want %q", st.Path, got, err, want)
		}
	}
	through := scanned(t, root, "a/2")
	through.Rel, through.Path = "link/2", filepath.Join(root, "link", "2")
	if b, err := readWithin(t, rd, through, 64); !errors.Is(err, beneath.ErrSymlink) {
		t.Errorf("through a symlinked directory: %q, %v; want ErrSymlink", b, err)
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
	writeFile(t, filepath.Join(dir, "warm"), "sibling")
	writeFile(t, filepath.Join(dir, "secret"), "secret")
	warm, secret := scanned(t, root, "d/warm"), scanned(t, root, "d/secret")
	if err := os.Chmod(secret.Path, 0); err != nil {
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
	if b, err := readWithin(t, rd, warm, 64); err != nil || string(b) != "sibling" {
		t.Fatalf("sibling: %q, %v", b, err)
	}
	b, err := readWithin(t, rd, secret, 64)
	denied(t, secret.Path, b, err)

	// The reader holds dir open; taking its search permission away still
	// denies what is in it, as it would by absolute path.
	if err := os.Chmod(dir, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	b, err = readWithin(t, rd, warm, 64)
	denied(t, warm.Path, b, err)
	b, err = readWithin(t, newSmallReader(), warm, 64)
	denied(t, warm.Path, b, err)
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
// order, in the two-level layout of the bench trees): each opened alone
// (openTree: the root, then the file beneath it, as a streamed write
// does), or through smallReader.
func BenchmarkReadBatch(b *testing.B) {
	root := b.TempDir()
	content := bytes.Repeat([]byte("k"), 1024)
	var states []desired.State
	for i := range 5000 {
		rel := fmt.Sprintf("d%02d/e%02d/f%06d.txt", i/320, i/10%32, i)
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			b.Fatal(err)
		}
		states = append(states, scanned(b, root, rel))
	}
	slices.SortFunc(states, func(a, b desired.State) int { return strings.Compare(a.Rel, b.Rel) })
	b.Run("openTree", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, len(content)+1)
		for b.Loop() {
			for _, st := range states {
				f, err := openTree(st)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.ReadFull(f, buf)
				f.Close()
				if n != len(content) || err != io.ErrUnexpectedEOF {
					b.Fatal(n, err)
				}
			}
		}
	})
	b.Run("smallReader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rd := newSmallReader()
			for _, st := range states {
				if d, err := rd.read(st, 1<<20); err != nil || len(d) != len(content) {
					b.Fatal(len(d), err)
				}
			}
			rd.close()
		}
	})
}
