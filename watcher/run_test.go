package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

func TestRunStartupSnapshot(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "index.html", "<h1>hi</h1>")
	write(t, root, "a/b/c.txt", "c")
	r := start(t, testOpts(t, root), nil)
	snaps := r.sink.snaps()
	if len(snaps) != 1 || snaps[0].Trigger != desired.TriggerStartup || !snaps[0].Complete {
		t.Fatalf("snapshots = %+v, want one complete startup snapshot", snaps)
	}
	checkStates(t, snaps[0].States, []desired.State{present(root, "a/b/c.txt", "c"), present(root, "index.html", "<h1>hi</h1>")})
}

func TestRunCreateWriteTruncateRemove(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	r := start(t, testOpts(t, root), nil)
	p := filepath.Join(root, "f.txt")

	m := r.sink.mark()
	write(t, root, "f.txt", "one")
	checkStates(t, r.sync(t, m), []desired.State{present(root, "f.txt", "one")})

	m = r.sink.mark()
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(" two"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	checkStates(t, r.sync(t, m), []desired.State{present(root, "f.txt", "one two")})

	m = r.sink.mark()
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	checkStates(t, r.sync(t, m), []desired.State{present(root, "f.txt", "")})

	m = r.sink.mark()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	checkStates(t, r.sync(t, m), []desired.State{deleted("f.txt")})

	// A file created and removed within one quiet period was never
	// published, so nothing is said about it.
	m = r.sink.mark()
	write(t, root, "brief.txt", "x")
	os.Remove(filepath.Join(root, "brief.txt"))
	got := r.sync(t, m)
	for _, st := range got {
		if st.Key == "brief.txt" && !st.Deleted {
			// The debounce may have fired in between on a slow machine;
			// then a Deleted must follow.
			checkStates(t, got, []desired.State{deleted("brief.txt"), present(root, "brief.txt", "x")})
			return
		}
	}
	checkStates(t, got, nil)
}

func TestRunRenames(t *testing.T) {
	t.Parallel()
	root, outside := t.TempDir(), t.TempDir()
	write(t, root, "a.txt", "A")
	write(t, root, "sub/out.txt", "O")
	r := start(t, testOpts(t, root), nil)

	t.Run("within", func(t *testing.T) {
		m := r.sink.mark()
		if err := os.Rename(filepath.Join(root, "a.txt"), filepath.Join(root, "sub/b.txt")); err != nil {
			t.Fatal(err)
		}
		checkStates(t, r.sync(t, m), []desired.State{deleted("a.txt"), present(root, "sub/b.txt", "A")})
	})
	t.Run("into", func(t *testing.T) {
		write(t, outside, "in.txt", "I")
		m := r.sink.mark()
		if err := os.Rename(filepath.Join(outside, "in.txt"), filepath.Join(root, "in.txt")); err != nil {
			t.Fatal(err)
		}
		checkStates(t, r.sync(t, m), []desired.State{present(root, "in.txt", "I")})
	})
	t.Run("out of", func(t *testing.T) {
		m := r.sink.mark()
		if err := os.Rename(filepath.Join(root, "sub/out.txt"), filepath.Join(outside, "out.txt")); err != nil {
			t.Fatal(err)
		}
		checkStates(t, r.sync(t, m), []desired.State{deleted("sub/out.txt")})
	})
	t.Run("directory out of and back into", func(t *testing.T) {
		write(t, root, "d/x/1.txt", "1")
		write(t, root, "d/2.txt", "2")
		m := r.sink.mark()
		r.sync(t, m)
		m = r.sink.mark()
		if err := os.Rename(filepath.Join(root, "d"), filepath.Join(outside, "d")); err != nil {
			t.Fatal(err)
		}
		checkStates(t, r.sync(t, m), []desired.State{deleted("d/2.txt"), deleted("d/x/1.txt")})
		m = r.sink.mark()
		if err := os.Rename(filepath.Join(outside, "d"), filepath.Join(root, "e")); err != nil {
			t.Fatal(err)
		}
		checkStates(t, r.sync(t, m), []desired.State{present(root, "e/2.txt", "2"), present(root, "e/x/1.txt", "1")})
		// The moved-in tree is watched: a change deep inside is seen.
		m = r.sink.mark()
		write(t, root, "e/x/1.txt", "1b")
		checkStates(t, r.sync(t, m), []desired.State{present(root, "e/x/1.txt", "1b")})
	})
}

// writeTree creates files dirs x per files under root/base and returns the
// expected states keyed by relative path.
func writeTree(t testing.TB, root, base string, dirs, per int) map[string]string {
	files := make(map[string]string)
	for d := range dirs {
		for i := range per {
			rel := fmt.Sprintf("%s/d%02d/s%d/f%04d.txt", base, d, i%3, i)
			files[rel] = rel
			write(t, root, rel, rel)
		}
	}
	return files
}

func TestRunRenameDirectory1000(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	files := make(map[string]string)
	for i := range 1000 {
		rel := fmt.Sprintf("a/sub%d/f%04d", i%4, i)
		files[rel] = rel
		write(t, root, rel, rel)
	}
	r := start(t, testOpts(t, root), nil)
	if n := len(r.sink.snaps()[0].States); n != 1000 {
		t.Fatalf("startup snapshot has %d states, want 1000", n)
	}
	m := r.sink.mark()
	if err := os.Rename(filepath.Join(root, "a"), filepath.Join(root, "b")); err != nil {
		t.Fatal(err)
	}
	var want []desired.State
	for rel, content := range files {
		want = append(want, deleted(rel), present(root, "b"+strings.TrimPrefix(rel, "a"), content))
	}
	checkStates(t, r.sync(t, m), want)
	// The renamed tree's watches follow it: a change below is seen under
	// the new name only.
	m = r.sink.mark()
	write(t, root, "b/sub1/f0001", "changed")
	checkStates(t, r.sync(t, m), []desired.State{present(root, "b/sub1/f0001", "changed")})
}

func TestRunBurst10000(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	reg := prometheus.NewRegistry()
	opts := testOpts(t, root)
	opts.Metrics = metrics.New(reg, "test").Sync("test")
	r := start(t, opts, nil)
	// Ten new top-level trees, three levels deep, created as fast as
	// possible; directories appear and fill before their watches land.
	files := writeTree(t, root, "burst", 10, 1000)
	waitFor(t, "all 10,000 keys", func() bool { return r.sink.viewLen() >= len(files) })
	r.sink.mu.Lock()
	defer r.sink.mu.Unlock()
	if len(r.sink.view) != len(files) {
		t.Fatalf("view has %d keys, want %d", len(r.sink.view), len(files))
	}
	for rel, content := range files {
		st, ok := r.sink.view[rel]
		if !ok || st.Hash != sha(content) || st.Size != int64(len(content)) || st.Err != nil {
			t.Fatalf("key %s: got %+v (present %v), want hash of %q", rel, st, ok, content)
		}
	}
	t.Logf("burst delivered in %d change batches and %d snapshots (overflows: %v)", r.sink.batches,
		len(r.sink.snapshots), testutil.ToFloat64(opts.Metrics.WatcherOverflow))
}

func TestRunAtomicSave(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "page.html", "old")
	r := start(t, testOpts(t, root), nil)
	m := r.sink.mark()
	for _, tmp := range []string{"page.html.tmp", ".page.html.tmp", ".page.html.a1B2c3"} {
		write(t, root, tmp, "new "+tmp)
		if err := os.Rename(filepath.Join(root, tmp), filepath.Join(root, "page.html")); err != nil {
			t.Fatal(err)
		}
	}
	checkStates(t, r.sync(t, m), []desired.State{present(root, "page.html", "new .page.html.a1B2c3")})
}

func TestRunChmodOnly(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "f.txt", "f")
	r := start(t, testOpts(t, root), nil)
	m := r.sink.mark()
	if err := os.Chmod(filepath.Join(root, "f.txt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "f.txt"), time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	checkStates(t, r.sync(t, m), nil)
}

func TestRunRemovedBeforeRead(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "f.txt", "f")
	target := filepath.Join(root, "f.txt")
	var race sync.Once
	r := start(t, testOpts(t, root), func(w *Watcher) {
		w.open = func(root *beneath.Root, rel string) (*os.File, error) {
			name := filepath.Join(root.Path(), filepath.FromSlash(rel))
			if known := w.st.known.has("f.txt"); name == target && known {
				// The file goes between the event's stat and the read.
				race.Do(func() { os.Remove(name) })
			}
			return openFile(root, rel)
		}
	})
	m := r.sink.mark()
	write(t, root, "f.txt", "changed")
	checkStates(t, r.sync(t, m), []desired.State{deleted("f.txt")})
}

func TestRunUnreadable(t *testing.T) {
	t.Parallel()
	t.Run("injected", func(t *testing.T) {
		t.Parallel()
		root := t.TempDir()
		target := filepath.Join(root, "secret.txt")
		var mu sync.Mutex
		deny := true
		r := start(t, testOpts(t, root), func(w *Watcher) {
			w.open = func(root *beneath.Root, rel string) (*os.File, error) {
				name := filepath.Join(root.Path(), filepath.FromSlash(rel))
				mu.Lock()
				defer mu.Unlock()
				if name == target && deny {
					return nil, &os.PathError{Op: "open", Path: name, Err: syscall.EACCES}
				}
				return openFile(root, rel)
			}
		})
		m := r.sink.mark()
		write(t, root, "secret.txt", "s")
		got := r.sync(t, m)
		checkStates(t, got, []desired.State{{Key: "secret.txt", Path: target, Err: ErrUnreadable}})
		if !errors.Is(got[0].Err, ErrUnreadable) || !strings.Contains(got[0].Err.Error(), target) {
			t.Fatalf("Err = %v, want ErrUnreadable naming %s", got[0].Err, target)
		}
		mu.Lock()
		deny = false
		mu.Unlock()
		m = r.sink.mark()
		if err := os.Chmod(target, 0o644); err != nil { // the fix the admin makes
			t.Fatal(err)
		}
		checkStates(t, r.sync(t, m), []desired.State{present(root, "secret.txt", "s")})
	})
	t.Run("permission", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() == 0 {
			t.Skip("running as root, which reads any file; the injected case covers this")
		}
		root := t.TempDir()
		r := start(t, testOpts(t, root), nil)
		m := r.sink.mark()
		write(t, root, "secret.txt", "s")
		if err := os.Chmod(filepath.Join(root, "secret.txt"), 0); err != nil {
			t.Fatal(err)
		}
		got := r.sync(t, m)
		if len(got) == 0 || got[len(got)-1].Err == nil {
			t.Fatalf("got %s, want a held-back state", fmtStates(got))
		}
	})
}

func TestRunTooLarge(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	reg := prometheus.NewRegistry()
	opts := testOpts(t, root)
	opts.MaxFileSize = 10
	opts.Metrics = metrics.New(reg, "test").Sync("test")
	opened := &countingOpen{}
	r := start(t, opts, func(w *Watcher) { w.open = opened.open })
	m := r.sink.mark()
	write(t, root, "big.bin", "0123456789A")
	got := r.sync(t, m)
	p := filepath.Join(root, "big.bin")
	checkStates(t, got, []desired.State{{Key: "big.bin", Path: p, Size: 11, Err: ErrTooLarge}})
	if !errors.Is(got[0].Err, ErrTooLarge) || !strings.Contains(got[0].Err.Error(), p) || !strings.Contains(got[0].Err.Error(), "11 bytes") {
		t.Fatalf("Err = %v, want ErrTooLarge naming the file and its size", got[0].Err)
	}
	for _, n := range opened.names {
		if n == p {
			t.Fatalf("the oversized file was opened")
		}
	}
	if v := testutil.ToFloat64(opts.Metrics.FilesSkipped.WithLabelValues("too_large")); v != 1 {
		t.Fatalf("files_skipped{too_large} = %v, want 1", v)
	}
}

func TestRunFIFO(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(root, "early.fifo"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	write(t, root, "f.txt", "f")
	opened := &countingOpen{}
	// start and sync time out (failing the test) should a FIFO block a scan.
	r := start(t, testOpts(t, root), func(w *Watcher) { w.open = opened.open })
	checkStates(t, r.sink.snaps()[0].States, []desired.State{present(root, "f.txt", "f")})
	m := r.sink.mark()
	if err := syscall.Mkfifo(filepath.Join(root, "late.fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkStates(t, r.sync(t, m), nil)
	for _, n := range opened.names {
		if strings.HasSuffix(n, ".fifo") {
			t.Fatalf("FIFO %s was opened", n)
		}
	}
}

func TestRunSymlinks(t *testing.T) {
	t.Parallel()
	outside := t.TempDir()
	write(t, outside, "o.txt", "outside")
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowOutside=%v", allow), func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			write(t, root, "target.txt", "T")
			opts := testOpts(t, root)
			opts.AllowSymlinksOutside = allow
			r := start(t, opts, nil)
			m := r.sink.mark()
			link := func(old, name string) {
				if err := os.Symlink(old, filepath.Join(root, name)); err != nil {
					t.Fatal(err)
				}
			}
			link("target.txt", "in.txt")
			link(filepath.Join(outside, "o.txt"), "out.txt")
			link("loop2", "loop1")
			link("loop1", "loop2")
			link("self", "self")
			link(".", "dirlink")
			// A link is named by its own path, not its target's: that is
			// the file a person looks for under its key.
			in := present(root, "in.txt", "T")
			want := []desired.State{in}
			if allow {
				want = append(want, present(root, "out.txt", "outside"))
			}
			checkStates(t, r.sync(t, m), want)

			// Changing the target changes the link's key too.
			m = r.sink.mark()
			write(t, root, "target.txt", "T2")
			in2 := present(root, "in.txt", "T2")
			checkStates(t, r.sync(t, m), []desired.State{in2, present(root, "target.txt", "T2")})
		})
	}
}

func TestRunSidecar(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	reg := prometheus.NewRegistry()
	opts := testOpts(t, root)
	opts.Metrics = metrics.New(reg, "test").Sync("test")
	write(t, root, "doc.txt", "D")
	r := start(t, opts, nil)
	withMeta := func(meta string) desired.State {
		s := present(root, "doc.txt", "D")
		if meta != "" {
			s.Metadata = json.RawMessage(meta)
		}
		return s
	}
	side := filepath.Join(root, "doc.txt.meta.json")
	steps := []struct {
		name    string
		do      func()
		want    []desired.State
		errWant string
	}{
		{"create", func() { write(t, root, "doc.txt.meta.json", "{ \"a\": 1 }\n") }, []desired.State{withMeta(`{"a":1}`)}, ""},
		{"change", func() { write(t, root, "doc.txt.meta.json", `{"a": 2}`) }, []desired.State{withMeta(`{"a":2}`)}, ""},
		{"invalid json", func() { write(t, root, "doc.txt.meta.json", `{"a": `) }, []desired.State{{Key: "doc.txt", Path: filepath.Join(root, "doc.txt"), Err: ErrBadSidecar}}, "not valid JSON"},
		{"not an object", func() { write(t, root, "doc.txt.meta.json", `[1]`) }, []desired.State{{Key: "doc.txt", Path: filepath.Join(root, "doc.txt"), Err: ErrBadSidecar}}, "not a JSON object"},
		{"too large", func() { write(t, root, "doc.txt.meta.json", `{"a":"`+strings.Repeat("x", 1100)+`"}`) }, []desired.State{{Key: "doc.txt", Path: filepath.Join(root, "doc.txt"), Err: ErrBadSidecar}}, "over the KV limit of 1024"},
		{"file changes while held back", func() { write(t, root, "doc.txt", "D") }, nil, ""},
		{"fixed", func() { write(t, root, "doc.txt.meta.json", `{"b":true}`) }, []desired.State{withMeta(`{"b":true}`)}, ""},
		{"deleted", func() { os.Remove(side) }, []desired.State{withMeta("")}, ""},
		{"orphan", func() { write(t, root, "gone.txt.meta.json", `{}`) }, nil, ""},
	}
	for _, s := range steps {
		m := r.sink.mark()
		s.do()
		got := r.sync(t, m)
		checkStates(t, got, s.want)
		if s.errWant != "" {
			if e := got[0].Err; !errors.Is(e, ErrBadSidecar) || !strings.Contains(e.Error(), side) || !strings.Contains(e.Error(), s.errWant) {
				t.Fatalf("%s: Err = %v, want ErrBadSidecar naming %s and %q", s.name, e, side, s.errWant)
			}
		}
	}
	if v := testutil.ToFloat64(opts.Metrics.FilesSkipped.WithLabelValues("bad_metadata")); v < 1 {
		t.Fatalf("files_skipped{bad_metadata} = %v, want >= 1", v)
	}
}

func TestRunExclusionsIgnoreEvents(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	opts := testOpts(t, root)
	opts.Exclude = []string{"**/node_modules", "*.log"}
	r := start(t, opts, nil)
	m := r.sink.mark()
	for _, rel := range []string{".hidden", ".git/config", "x.swp", ".x.swp", "x~", "4913", ".DS_Store", "node_modules/m.js", "a/node_modules/m.js", "err.log", ".well-known/security.txt"} {
		write(t, root, rel, rel)
	}
	// The excluded directories were not watched: nothing shows up inside.
	write(t, root, "a/node_modules/later.js", "x")
	checkStates(t, r.sync(t, m), []desired.State{present(root, ".well-known/security.txt", ".well-known/security.txt")})
}

// ctlSource wraps a real event source so tests can inject errors and
// refuse watches.
type ctlSource struct {
	eventSource
	errs   chan error
	refuse func(path string) error
}

func (c *ctlSource) Errors() <-chan error { return c.errs }
func (c *ctlSource) Add(p string) error {
	if c.refuse != nil {
		if err := c.refuse(p); err != nil {
			return err
		}
	}
	return c.eventSource.Add(p)
}

func wrapSource(refuse func(string) error, got chan<- *ctlSource) func() (eventSource, error) {
	return func() (eventSource, error) {
		src, err := newFSNotifySource()
		if err != nil {
			return nil, err
		}
		c := &ctlSource{eventSource: src, errs: make(chan error), refuse: refuse}
		go func() {
			for err := range src.Errors() {
				c.errs <- err
			}
		}()
		if got != nil {
			got <- c
		}
		return c, nil
	}
}

func TestRunOverflowRescans(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "a.txt", "a")
	reg := prometheus.NewRegistry()
	opts := testOpts(t, root)
	opts.Metrics = metrics.New(reg, "test").Sync("test")
	sources := make(chan *ctlSource, 4)
	r := start(t, opts, func(w *Watcher) { w.newSource = wrapSource(nil, sources) })
	first := <-sources
	first.errs <- fsnotify.ErrEventOverflow
	waitFor(t, "overflow snapshot", func() bool { return len(r.sink.snaps()) == 2 })
	snap := r.sink.snaps()[1]
	if snap.Trigger != desired.TriggerOverflow || !snap.Complete {
		t.Fatalf("snapshot = %+v, want a complete overflow snapshot", snap)
	}
	checkStates(t, snap.States, []desired.State{present(root, "a.txt", "a")})
	if v := testutil.ToFloat64(opts.Metrics.WatcherOverflow); v != 1 {
		t.Fatalf("watcher_overflows_total = %v, want 1", v)
	}
	if v := testutil.ToFloat64(opts.Metrics.FullSyncs.WithLabelValues("overflow")); v != 1 {
		t.Fatalf("full_syncs_total{overflow} = %v, want 1", v)
	}
	// Watching resumes on a fresh source, subdirectories included.
	<-sources
	m := r.sink.mark()
	write(t, root, "b.txt", "b")
	checkStates(t, r.sync(t, m), []desired.State{present(root, "b.txt", "b")})
}

// TestRunWatchLimit: where the kernel refuses watches, events still work
// under the directories it granted, and the watcher falls back to periodic
// rescans (though none were configured) for the ones it refused.
func TestRunWatchLimit(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "top.txt", "t")
	opts := testOpts(t, root)
	opts.RescanInterval = -1
	opts.Metrics = metrics.New(prometheus.NewRegistry(), "test").Sync("test")
	refuse := func(p string) error {
		if p != root {
			return fmt.Errorf("inotify_add_watch %s: %w", p, syscall.ENOSPC)
		}
		return nil
	}
	r := start(t, opts, func(w *Watcher) {
		w.newSource = wrapSource(refuse, nil)
		// Well past the debounce (quiet 50 ms, max_delay 300 ms), so the
		// first change below is delivered by its event before any rescan.
		w.degradedRescan = 700 * time.Millisecond
	})
	changedTo := func(m int, key, content string) func() bool {
		return func() bool {
			for _, st := range r.sink.since(m) {
				if st.Key == key && st.Hash == sha(content) {
					return true
				}
			}
			return false
		}
	}
	// The root's watch works, so creating a directory is an event, and the
	// scan that follows it finds what the directory holds by then; its own
	// watch is refused.
	// The directory arrives whole, by one rename, so the scan that follows
	// its event cannot find it before its file is written.
	staging := t.TempDir()
	write(t, staging, "deep/er/file.txt", "f")
	m := r.sink.mark()
	if err := os.Rename(filepath.Join(staging, "deep"), filepath.Join(root, "deep")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new directory's file, as a change", changedTo(m, "deep/er/file.txt", "f"))
	// The refused directories are counted: deep and deep/er; the root is
	// watched.
	if w, u := testutil.ToFloat64(opts.Metrics.Watches), testutil.ToFloat64(opts.Metrics.Unwatched); w != 1 || u != 2 {
		t.Errorf("kvsync_watched_directories %v, kvsync_unwatched_directories %v; want 1 and 2", w, u)
	}
	// What comes later there has no event, so only a rescan can see it, and
	// rescans run only because the watcher degraded to them.
	write(t, root, "deep/er/later.txt", "l")
	waitFor(t, "later file from a periodic rescan", func() bool {
		for _, s := range r.sink.snaps() {
			for _, st := range s.States {
				if s.Trigger == desired.TriggerPeriodic && st.Key == "deep/er/later.txt" && st.Hash == sha("l") {
					return true
				}
			}
		}
		return false
	})
	// Events still work where watches were granted (the first step showed
	// they arrive as changes). Now a periodic rescan may carry the change
	// first, after which its event finds nothing new: either way it is seen.
	write(t, root, "top.txt", "t2")
	waitFor(t, "change at the root", func() bool {
		st, ok := r.sink.viewOf("top.txt")
		return ok && st.Hash == sha("t2")
	})
	// A refused directory that goes away is no longer counted.
	if err := os.RemoveAll(filepath.Join(root, "deep")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removed directories uncounted", func() bool {
		return testutil.ToFloat64(opts.Metrics.Unwatched) == 0
	})
}

// TestWatchGaugesPerSync: two syncs of one process, each with its own
// series of the watched-directories gauge. The scenario: 6
// directories in all, then mkdir of two in the second tree, then one in the
// first; the gauge once showed only the sync updated last (5, then 4, where
// 9 were watched). Each sync's value and their sum must be right after every
// step, and a stopped sync's series drops to 0 without touching the other.
func TestWatchGaugesPerSync(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	rs := map[string]*running{}
	for name, dirs := range map[string]int{"a": 2, "b": 2} {
		root := t.TempDir()
		for i := range dirs {
			write(t, root, fmt.Sprintf("d%d/f.txt", i), "x")
		}
		opts := testOpts(t, root)
		opts.Metrics = m.Sync(name)
		rs[name] = start(t, opts, nil)
	}
	watched := func(a, b int) func() bool {
		return func() bool {
			return testutil.CollectAndCompare(m.Watches, strings.NewReader(fmt.Sprintf(`
# HELP kvsync_watched_directories Directories of a sync with an inotify watch.
# TYPE kvsync_watched_directories gauge
kvsync_watched_directories{sync="a"} %d
kvsync_watched_directories{sync="b"} %d
`, a, b))) == nil && gaugeSum(t, reg, "kvsync_watched_directories") == float64(a+b)
		}
	}
	mkdir := func(sync string, names ...string) {
		for _, n := range names {
			if err := os.Mkdir(filepath.Join(rs[sync].root, n), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Roots and their directories: 3 + 3.
	waitFor(t, "a=3 b=3, 6 in all", watched(3, 3))
	mkdir("b", "x1", "x2")
	waitFor(t, "a=3 b=5, 8 in all", watched(3, 5))
	mkdir("a", "y1")
	waitFor(t, "a=4 b=5, 9 in all", watched(4, 5))
	if err := os.Remove(filepath.Join(rs["b"].root, "x1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a=4 b=4 after rmdir in b", watched(4, 4))
	rs["a"].stop(t)
	waitFor(t, "a=0 b=4 once a stopped", watched(0, 4))
}

// gaugeSum adds up every series of the family name in reg: what
// sum(name) shows in Prometheus.
func gaugeSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, mt := range mf.GetMetric() {
				sum += mt.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func TestRunRescanRequest(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	r := start(t, testOpts(t, root), nil)
	r.w.Rescan(desired.TriggerReload)
	waitFor(t, "sighup snapshot", func() bool {
		s := r.sink.snaps()
		return len(s) == 2 && s[1].Trigger == desired.TriggerReload && s[1].Complete
	})
	// A second Run of the same Watcher is refused.
	if err := r.w.Run(context.Background(), newRecSink()); err == nil {
		t.Fatal("second Run returned nil")
	}
}

func TestRunMaxDelay(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	r := start(t, testOpts(t, root), nil)
	m := r.sink.mark()
	// Writes every 10 ms never leave the 50 ms quiet period, yet the path
	// must be emitted while they go on, by MaxDelay (300 ms).
	stop := time.Now().Add(15 * time.Second)
	emitted := false
	for i := 0; time.Now().Before(stop); i++ {
		write(t, root, "busy.txt", fmt.Sprint(i))
		if len(r.sink.since(m)) > 0 {
			emitted = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !emitted {
		t.Fatal("a continuously written file was not emitted while being written")
	}
}

func TestRunSlowSinkCoalesces(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	r := start(t, testOpts(t, root), nil)
	release := make(chan struct{})
	r.sink.mu.Lock()
	r.sink.block = release
	r.sink.mu.Unlock()
	m := r.sink.mark()
	write(t, root, "first.txt", "1")
	// Give the debounce time to fire the first change into the blocked
	// sink; correctness does not depend on it, only what is coalesced.
	time.Sleep(200 * time.Millisecond)
	for i := range 20 {
		write(t, root, "hot.txt", fmt.Sprint(i))
		time.Sleep(5 * time.Millisecond)
	}
	r.sink.mu.Lock()
	r.sink.block = nil
	r.sink.mu.Unlock()
	close(release)
	got := r.sync(t, m)
	last := map[string]desired.State{}
	for _, st := range got {
		last[st.Key] = st
	}
	if last["hot.txt"].Hash != sha("19") || last["first.txt"].Hash != sha("1") {
		t.Fatalf("after a blocked sink got %s", fmtStates(got))
	}
	if len(got) > 4 {
		t.Fatalf("20 writes behind a blocked sink produced %d states, want them coalesced: %s", len(got), fmtStates(got))
	}
}

func TestRunRootRemovedAndBack(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	root := filepath.Join(parent, "site")
	write(t, root, "a.txt", "a")
	r := start(t, testOpts(t, root), nil)
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "incomplete snapshot", func() bool {
		s := r.sink.snaps()
		return len(s) >= 2 && s[len(s)-1].Trigger == desired.TriggerError && !s[len(s)-1].Complete
	})
	write(t, root, "b.txt", "b")
	r.w.Rescan(desired.TriggerReload)
	waitFor(t, "snapshot of the new root", func() bool {
		s := r.sink.snaps()
		return s[len(s)-1].Trigger == desired.TriggerReload && s[len(s)-1].Complete
	})
	// The new root is watched again.
	m := r.sink.mark()
	write(t, root, "c.txt", "c")
	checkStates(t, r.sync(t, m), []desired.State{present(root, "c.txt", "c")})
}
