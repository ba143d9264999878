package watcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/metrics"
)

// mixedTree writes a tree with something of every kind the walk treats
// differently, nested so that directories are listed ahead of the walk.
func mixedTree(t *testing.T, root, outside string) {
	t.Helper()
	write(t, outside, "o.txt", "outside")
	write(t, outside, "m.json", `{"o":1}`)
	for d := range 4 {
		for s := range 5 {
			dir := fmt.Sprintf("d%d/s%d", d, s)
			for f := range 6 {
				rel := fmt.Sprintf("%s/f%d.txt", dir, f)
				write(t, root, rel, rel)
				if f%3 == 0 {
					write(t, root, rel+SidecarSuffix, fmt.Sprintf(`{"f":%d}`, f))
				}
			}
		}
	}
	write(t, root, "a-b.txt", "sorts between a and a/b")
	write(t, root, "a/b.txt", "b")
	write(t, root, "bad.txt", "bad")
	write(t, root, "bad.txt.meta.json", `[1]`)
	write(t, root, "orphan.txt.meta.json", `{}`)
	write(t, root, "dirside.txt", "its sidecar is a directory")
	write(t, root, "dirside.txt.meta.json/x.txt", "inside a directory named like a sidecar")
	write(t, root, ".hidden/h.txt", "hidden")
	write(t, root, "d1/.DS_Store", "debris")
	write(t, root, "insidelink.txt", "link target")
	write(t, root, "metalink.txt", "metadata through a link")
	write(t, root, "meta.json.src", `{"l":1}`)
	write(t, root, "outmeta.txt", "metadata outside")
	link := func(old, name string) {
		t.Helper()
		if err := os.Symlink(old, filepath.Join(root, filepath.FromSlash(name))); err != nil {
			t.Fatal(err)
		}
	}
	link(filepath.Join(root, "insidelink.txt"), "d2/s1/link.txt")
	link("../../insidelink.txt", "d2/s2/rellink.txt")
	link(filepath.Join(outside, "o.txt"), "d3/out.txt")
	link("nowhere", "dangling.txt")
	link("d0", "dirlink")
	link("meta.json.src", "metalink.txt.meta.json")
	link(filepath.Join(outside, "m.json"), "outmeta.txt.meta.json")
	if err := syscall.Mkfifo(filepath.Join(root, "d0", "s0", "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// scanOutcome is everything a scan is observable by: the snapshot, what it
// logged, the skips it remembers and counted.
type scanOutcome struct {
	snap    desired.Snapshot
	log     string
	skipped map[string]metrics.SkipReason
	metrics string
}

func scanWith(t *testing.T, opts Options, prefetch int) scanOutcome {
	t.Helper()
	var logs bytes.Buffer
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
		Level:       slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr { return dropTime(a) },
	}))
	reg := prometheus.NewRegistry()
	opts.Metrics = metrics.New(reg, "test").Sync("test")
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	w.prefetch = prefetch
	snap, err := w.Scan(context.Background(), desired.TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	out := scanOutcome{snap: snap, log: logs.String(), skipped: map[string]metrics.SkipReason{}}
	for rel, e := range w.st.skipped {
		out.skipped[rel] = e.reason
	}
	var m []string
	for _, reason := range []metrics.SkipReason{reasonExcluded, reasonDebris, reasonKeyInvalid, reasonTooLarge, reasonMetadata,
		reasonUnreadable, reasonSpecial, reasonSymlink, reasonOrphan} {
		m = append(m, fmt.Sprintf("%s=%v", reason, testutil.ToFloat64(opts.Metrics.FilesSkipped.WithLabelValues(string(reason)))))
	}
	out.metrics = strings.Join(m, " ")
	return out
}

func dropTime(a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// Listing ahead changes nothing a scan yields, logs or counts, however
// many directories may be listed ahead.
func TestWalkPrefetchSameOutcome(t *testing.T) {
	t.Parallel()
	root, outside := t.TempDir(), t.TempDir()
	mixedTree(t, root, outside)
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowOutside=%v", allow), func(t *testing.T) {
			t.Parallel()
			opts := Options{Root: root, AllowSymlinksOutside: allow, Now: func() time.Time { return time.Now().Add(time.Hour) }}
			ref := scanWith(t, opts, 0)
			want := map[string]metrics.SkipReason{
				"bad.txt":                     reasonMetadata,
				"orphan.txt.meta.json":        reasonOrphan,
				"dirside.txt":                 reasonMetadata,
				".hidden":                     reasonExcluded,
				"d1/.DS_Store":                reasonExcluded,
				"dangling.txt":                reasonSymlink,
				"dirlink":                     reasonSymlink,
				"d0/s0/pipe":                  reasonSpecial,
				"d3/out.txt":                  reasonSymlink,
				"outmeta.txt":                 reasonMetadata,
				"dirside.txt.meta.json/x.txt": "",
			}
			if allow {
				delete(want, "d3/out.txt")
				delete(want, "outmeta.txt")
			}
			for rel, reason := range want {
				if reason == "" {
					continue
				}
				if got := ref.skipped[rel]; got != reason && !(rel == "d1/.DS_Store" && got == reasonDebris) {
					t.Errorf("%s skipped as %q, want %q (all: %v)", rel, got, reason, ref.skipped)
				}
			}
			if !ref.snap.Complete || len(ref.snap.States) < 120 {
				t.Fatalf("reference scan: complete %v, %d states: %s", ref.snap.Complete, len(ref.snap.States), ref.snap.Reason)
			}
			for _, n := range []int{1, 2, 3, defaultPrefetch, 1000} {
				got := scanWith(t, opts, n)
				if fmtStates(got.snap.States) != fmtStates(ref.snap.States) || got.snap.Complete != ref.snap.Complete {
					t.Errorf("prefetch %d: states differ:\ngot  %s\nwant %s", n, fmtStates(got.snap.States), fmtStates(ref.snap.States))
				}
				if got.log != ref.log {
					t.Errorf("prefetch %d: log differs:\ngot\n%s\nwant\n%s", n, got.log, ref.log)
				}
				if fmt.Sprint(got.skipped) != fmt.Sprint(ref.skipped) || got.metrics != ref.metrics {
					t.Errorf("prefetch %d: skips %v (%s), want %v (%s)", n, got.skipped, got.metrics, ref.skipped, ref.metrics)
				}
			}
		})
	}
}

// wideTree writes dirs directories of two levels with per files each.
func wideTree(t *testing.T, root string, top, sub, per int) {
	t.Helper()
	for d := range top {
		for s := range sub {
			for f := range per {
				write(t, root, fmt.Sprintf("d%02d/s%02d/f%d.txt", d, s, f), "x")
			}
		}
	}
}

// However fast the listers are, no more than the bound of directories are
// listed ahead and not yet walked.
func TestWalkPrefetchBound(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	wideTree(t, root, 6, 8, 2)
	for _, limit := range []int{1, 3, 8} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			t.Parallel()
			w, err := New(testOpts(t, root))
			if err != nil {
				t.Fatal(err)
			}
			w.prefetch = limit
			var submitted []string
			peak := 0
			w.prefetched = func(abs string, outstanding int, _ int64) { // on the walking goroutine
				submitted = append(submitted, abs)
				peak = max(peak, outstanding)
			}
			var listed atomic.Int64
			w.listHook = func(string, bool) { listed.Add(1) }
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil || !snap.Complete || len(snap.States) != 6*8*2 {
				t.Fatalf("scan: %d states, complete %v, %v", len(snap.States), snap.Complete, err)
			}
			if peak > limit || peak == 0 {
				t.Fatalf("peak outstanding %d, want 1..%d", peak, limit)
			}
			// Every directory but the root is listed once, ahead or not.
			if n := listed.Load(); n != 2*(1+6+6*8) {
				t.Fatalf("listing hooks ran %d times, want %d", n, 2*(1+6+6*8))
			}
			seen := map[string]bool{}
			for _, abs := range submitted {
				if seen[abs] {
					t.Fatalf("%s submitted twice", abs)
				}
				seen[abs] = true
			}
		})
	}
}

// Listings made ahead hold at most about prefetchEntries entries: when the
// listers keep up (here they are made to: each submission waits until every
// directory submitted before it is listed), a directory is submitted only
// while the listings ahead hold fewer, so directories of 50 files with a
// bound of 100 entries are at most 4 ahead (3 by the entries; the bound is
// checked before the hook waits, so the last listing may not count yet),
// where 8 would be allowed by count alone.
func TestWalkPrefetchEntryBound(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	wideTree(t, root, 2, 10, 50)
	for _, entryLimit := range []int{100, 1 << 20} {
		t.Run(fmt.Sprint(entryLimit), func(t *testing.T) {
			t.Parallel()
			w, err := New(testOpts(t, root))
			if err != nil {
				t.Fatal(err)
			}
			w.prefetch, w.prefetchEntries = 8, entryLimit
			var mu sync.Mutex
			listed := map[string]bool{}
			changed := sync.NewCond(&mu)
			w.listHook = func(abs string, statted bool) {
				if statted {
					mu.Lock()
					listed[abs] = true
					changed.Broadcast()
					mu.Unlock()
				}
			}
			var submitted []string
			peak, peakAhead := 0, int64(0)
			w.prefetched = func(abs string, outstanding int, ahead int64) { // on the walking goroutine
				mu.Lock()
				for !allListed(listed, submitted) {
					changed.Wait()
				}
				mu.Unlock()
				submitted = append(submitted, abs)
				peak, peakAhead = max(peak, outstanding), max(peakAhead, ahead)
			}
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil || !snap.Complete || len(snap.States) != 2*10*50 {
				t.Fatalf("scan: %d states, complete %v, %v", len(snap.States), snap.Complete, err)
			}
			if entryLimit == 100 {
				if peak > 4 || peakAhead >= 100 {
					t.Errorf("at most %d directories outstanding and %d entries ahead at a submission, want at most 4 and under 100", peak, peakAhead)
				}
			} else if peak != 8 {
				t.Errorf("at most %d directories outstanding with no entry bound to speak of, want the count's bound, 8", peak)
			}
		})
	}
}

func allListed(listed map[string]bool, dirs []string) bool {
	for _, d := range dirs {
		if !listed[d] {
			return false
		}
	}
	return true
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// A scan whose ctx ends stops its listers before it returns: no goroutine
// and no directory left open, and no directory listed after the end.
// Not parallel: it counts the process's goroutines and files.
func TestWalkCancelStopsListers(t *testing.T) {
	root := t.TempDir()
	wideTree(t, root, 10, 10, 1)
	for _, at := range []int{1, 5, 40} {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			runtime.GC()
			gBefore, fdBefore := runtime.NumGoroutine(), openFDs(t)
			w, err := New(testOpts(t, root))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var mu sync.Mutex
			lists, after := 0, 0
			w.listHook = func(_ string, statted bool) {
				mu.Lock()
				defer mu.Unlock()
				if statted {
					return
				}
				if ctx.Err() != nil {
					after++
				}
				if lists++; lists == at {
					cancel()
				}
			}
			snap, err := w.Scan(ctx, desired.TriggerManual)
			if !errors.Is(err, context.Canceled) || snap.Complete {
				t.Fatalf("Scan = complete %v, %v; want incomplete and context.Canceled", snap.Complete, err)
			}
			mu.Lock()
			// A lister already past its check of ctx may list one more.
			if after > maxListers {
				t.Errorf("%d directories listed after the cancel", after)
			}
			mu.Unlock()
			// A lister is done once it has told the walk so, a moment
			// before its goroutine ends.
			waitFor(t, "the listers to end", func() bool { return runtime.NumGoroutine() <= gBefore })
			if fd := openFDs(t); fd != fdBefore {
				t.Fatalf("%d files open after the scan, %d before", fd, fdBefore)
			}
		})
	}
}

// A walk waiting for a listing that hangs ends with ctx, once the lister
// has given up.
func TestWalkCancelWhileWaiting(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	wideTree(t, root, 3, 3, 1)
	w, err := New(testOpts(t, root))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck := filepath.Join(root, "d01")
	entered := make(chan struct{})
	var released atomic.Bool
	w.listHook = func(abs string, statted bool) {
		if abs == stuck && !statted {
			close(entered)
			<-ctx.Done() // a hung file system, until shutdown
			time.Sleep(20 * time.Millisecond)
			released.Store(true)
		}
	}
	go func() {
		<-entered
		cancel()
	}()
	snap, err := w.Scan(ctx, desired.TriggerManual)
	if !errors.Is(err, context.Canceled) || snap.Complete {
		t.Fatalf("Scan = complete %v, %v; want incomplete and context.Canceled", snap.Complete, err)
	}
	// Scan returns only once its listers have: none is left holding a
	// directory open.
	if !released.Load() {
		t.Fatal("Scan returned while a lister was still listing")
	}
}

// Entries that vanish between the listing and their stat, or between the
// listing and the walk's turn, are skipped as gone: not errors, not held
// back, the scan complete.
func TestWalkEntriesVanish(t *testing.T) {
	t.Parallel()
	for _, prefetch := range []int{0, defaultPrefetch} {
		for _, statted := range []bool{false, true} {
			t.Run(fmt.Sprintf("prefetch=%d/afterStat=%v", prefetch, statted), func(t *testing.T) {
				t.Parallel()
				root := t.TempDir()
				wideTree(t, root, 2, 2, 1)
				write(t, root, "d01/s01/gone.txt", "gone")
				write(t, root, "d01/s01/nometa.txt", "its sidecar goes")
				write(t, root, "d01/s01/nometa.txt.meta.json", `{"m":1}`)
				write(t, root, "d01/s01/kept.txt", "kept")
				write(t, root, "d01/s01/kept.txt.meta.json", `{"k":1}`)
				var logs testkit.Buffer
				opts := testOpts(t, root)
				opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
				w, err := New(opts)
				if err != nil {
					t.Fatal(err)
				}
				w.prefetch = prefetch
				dir := filepath.Join(root, "d01", "s01")
				w.listHook = func(abs string, s bool) {
					if abs == dir && s == statted {
						for _, name := range []string{"gone.txt", "nometa.txt.meta.json"} {
							if err := os.Remove(filepath.Join(dir, name)); err != nil {
								t.Error(err)
							}
						}
					}
				}
				snap, err := w.Scan(context.Background(), desired.TriggerManual)
				if err != nil || !snap.Complete {
					t.Fatalf("scan: complete %v, %v: %s", snap.Complete, err, snap.Reason)
				}
				got := map[string]desired.State{}
				for _, st := range snap.States {
					got[st.Key] = st
				}
				if st, ok := got["d01/s01/gone.txt"]; ok {
					t.Errorf("a removed file was emitted: %s", fmtStates([]desired.State{st}))
				}
				if st := got["d01/s01/nometa.txt"]; st.Err != nil || st.Metadata != nil || st.Hash != sha("its sidecar goes") {
					t.Errorf("file whose sidecar went: %s", fmtStates([]desired.State{st}))
				}
				if st := got["d01/s01/kept.txt"]; st.Err != nil || string(st.Metadata) != `{"k":1}` {
					t.Errorf("untouched file: %s", fmtStates([]desired.State{st}))
				}
				if len(snap.States) != 2*2+2 {
					t.Errorf("got %d states: %s", len(snap.States), fmtStates(snap.States))
				}
				if s := logs.String(); s != "" {
					t.Errorf("logged:\n%s", s)
				}
			})
		}
	}
}

// A file replaced by a directory after the listing is not published as a
// file, nor does it spoil the scan; the next scan finds the directory's
// files. A directory replaced by a file likewise.
func TestWalkReplacedEntries(t *testing.T) {
	t.Parallel()
	for _, prefetch := range []int{0, defaultPrefetch} {
		t.Run(fmt.Sprintf("prefetch=%d", prefetch), func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			wideTree(t, root, 2, 2, 1)
			write(t, root, "d00/s00/was-file", "file")
			write(t, root, "d01/was-dir/inner.txt", "inner")
			opts := testOpts(t, root)
			w, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			w.prefetch = prefetch
			var once1, once2 sync.Once
			w.listHook = func(abs string, statted bool) {
				switch {
				case abs == filepath.Join(root, "d00", "s00") && !statted:
					once1.Do(func() {
						p := filepath.Join(abs, "was-file")
						if err := os.Remove(p); err != nil {
							t.Error(err)
						}
						write(t, root, "d00/s00/was-file/now.txt", "now")
					})
				case abs == filepath.Join(root, "d01") && statted:
					// Listed as a directory; a file by the time it is read.
					once2.Do(func() {
						if err := os.RemoveAll(filepath.Join(abs, "was-dir")); err != nil {
							t.Error(err)
						}
						write(t, root, "d01/was-dir", "a file now")
					})
				}
			}
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil || !snap.Complete {
				t.Fatalf("scan: complete %v, %v: %s", snap.Complete, err, snap.Reason)
			}
			for _, st := range snap.States {
				if strings.HasPrefix(st.Key, "d00/s00/was-file") || strings.HasPrefix(st.Key, "d01/was-dir") {
					t.Errorf("replaced entry emitted as it was: %s", fmtStates([]desired.State{st}))
				}
			}
			if len(snap.States) != 4 {
				t.Errorf("got %s, want the 4 untouched files", fmtStates(snap.States))
			}
			snap, err = w.Scan(context.Background(), desired.TriggerManual)
			if err != nil || !snap.Complete {
				t.Fatalf("rescan: complete %v, %v", snap.Complete, err)
			}
			var keys []string
			for _, st := range snap.States {
				keys = append(keys, st.Key)
			}
			sort.Strings(keys)
			want := "d00/s00/f0.txt,d00/s00/was-file/now.txt,d00/s01/f0.txt,d01/s00/f0.txt,d01/s01/f0.txt,d01/was-dir"
			if got := strings.Join(keys, ","); got != want {
				t.Errorf("rescan keys %s, want %s", got, want)
			}
		})
	}
}

// A scan delivers keys in byte order, the order of the state store and of
// KV's listings, with no sort of its own: each directory is walked as if
// its name ended in "/", so names with bytes below '/' ('-', '.', ' ',
// '!') come before the directory they extend, and multibyte names after
// every ASCII one.
func TestScanKeyOrder(t *testing.T) {
	t.Parallel()
	rels := []string{
		"a-b", "a/x", "a/y/z", "a/y-1", "a/y.txt", "a/y0", "a0", "a.b/c", "a.c",
		"a b/c", "a b!", " lead", "!bang", "ab/c", "é/f", "e/f", "e-f", "z", "zz/é", "zz/e/e",
		"d/d/d/d", "d/d/d-", "d/d-/d", "d/d.", "d0",
	}
	for _, prefetch := range []int{0, defaultPrefetch} {
		t.Run(fmt.Sprintf("prefetch=%d", prefetch), func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			for _, r := range rels {
				write(t, root, r, r)
			}
			w, err := New(Options{Root: root, Prefix: "p/"})
			if err != nil {
				t.Fatal(err)
			}
			w.prefetch = prefetch
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil || !snap.Complete {
				t.Fatalf("scan: %v %q", err, snap.Reason)
			}
			var got []string
			for _, st := range snap.States {
				got = append(got, st.Key)
			}
			want := make([]string, len(rels))
			for i, r := range rels {
				want[i] = "p/" + r
			}
			sort.Strings(want)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("keys in walk order:\n%s\nwant byte order:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func TestCompareNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a    string
		aDir bool
		b    string
		bDir bool
		want int
	}{
		{"a-b", false, "a", true, -1}, // '-' < '/'
		{"a", true, "a0", false, -1},  // '/' < '0'
		{"a", false, "a", true, -1},   // a file "a" before the keys below "a/"
		{"a", false, "a-b", false, -1},
		{"a.b", true, "a", true, -1},
		{"é", false, "z", true, 1},
		{"b", true, "b", true, 0},
	} {
		got := compareNames(tc.a, tc.aDir, tc.b, tc.bDir)
		if got != tc.want {
			t.Errorf("compareNames(%q dir=%v, %q dir=%v) = %d, want %d", tc.a, tc.aDir, tc.b, tc.bDir, got, tc.want)
		}
		if back := compareNames(tc.b, tc.bDir, tc.a, tc.aDir); back != -tc.want {
			t.Errorf("compareNames(%q, %q) reversed = %d, want %d", tc.b, tc.a, back, -tc.want)
		}
	}
}
