package uploader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
	"github.com/kvsync/kvsync/watcher"
)

// The attack of issue 11: between the scan of a tree and the upload of its
// files, someone who can write in the tree swaps a file, or a directory on
// its way, for a symlink to a secret outside it (kvsync's own API token,
// say) of exactly the size the scan saw. These tests make the swap through
// a hook, never by timing, and check every value and every metadata the
// emulator ends up holding.

// secret is what the files outside the root hold; every one has the size
// of the file of the tree whose place it takes.
const secret = "SECRET-TOKEN-0123"

// swapTree is a tree to publish beside a directory of secrets.
type swapTree struct {
	root, outside string
}

func newSwapTree(t *testing.T) swapTree {
	t.Helper()
	base := t.TempDir()
	st := swapTree{root: filepath.Join(base, "root"), outside: filepath.Join(base, "outside")}
	for rel, content := range map[string]string{
		"index.html":          "public index page",
		"top.txt":             "top level public!",
		"sub/f.txt":           "sub file public!!",
		"sub/f.txt.meta.json": `{"k":"public"}`,
		"side.txt":            "side file public!",
		"side.txt.meta.json":  `{"k":"public"}`,
	} {
		writeFile(t, filepath.Join(st.root, filepath.FromSlash(rel)), content)
	}
	for rel, content := range map[string]string{
		"top.txt":         secret,
		"f.txt":           secret,
		"f.txt.meta.json": `{"k":"` + secret + `"}`,
		"secret.json":     `{"k":"` + secret + `"}`,
	} {
		writeFile(t, filepath.Join(st.outside, rel), content)
	}
	return st
}

// swaps are the ways a file of the tree is made to lead outside it, each
// with the key whose file it takes.
var swaps = []struct {
	name, key string
	swap      func(t *testing.T, tr swapTree)
}{
	{"file for a symlink", "top.txt", func(t *testing.T, tr swapTree) {
		link(t, filepath.Join(tr.outside, "top.txt"), filepath.Join(tr.root, "top.txt"))
	}},
	{"parent directory for a symlink", "sub/f.txt", func(t *testing.T, tr swapTree) {
		// mv sub .s; ln -s /outside sub
		if err := os.Rename(filepath.Join(tr.root, "sub"), filepath.Join(tr.root, ".s")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(tr.outside, filepath.Join(tr.root, "sub")); err != nil {
			t.Fatal(err)
		}
	}},
}

// link replaces name with a symlink to target.
func link(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

// sentKV records every value and metadata a client sends, so a secret
// that reached the emulator and was deleted since is caught too.
type sentKV struct {
	kvapi.KV
	mu   sync.Mutex
	sent []*bytes.Buffer
}

func (s *sentKV) record(b []byte) *bytes.Buffer {
	s.mu.Lock()
	defer s.mu.Unlock()
	buf := bytes.NewBuffer(append([]byte(nil), b...))
	s.sent = append(s.sent, buf)
	return buf
}

func (s *sentKV) PutValue(ctx context.Context, ns, key string, v kvapi.Value, o kvapi.PutOptions) error {
	s.record(o.Metadata)
	return s.KV.PutValue(ctx, ns, key, teeValue{v, s}, o)
}

func (s *sentKV) BulkPut(ctx context.Context, ns string, pairs []kvapi.BulkPair) (kvapi.BulkResult, error) {
	for _, p := range pairs {
		s.record(p.Value)
		s.record(p.Metadata)
	}
	return s.KV.BulkPut(ctx, ns, pairs)
}

// teeValue copies what each attempt of a streamed write reads.
type teeValue struct {
	kvapi.Value
	s *sentKV
}

func (v teeValue) Open() (io.ReadCloser, error) {
	r, err := v.Value.Open()
	if err != nil {
		return nil, err
	}
	s := v.s
	s.mu.Lock()
	buf := &bytes.Buffer{}
	s.sent = append(s.sent, buf)
	s.mu.Unlock()
	return readCloser{io.TeeReader(r, lockedWriter{&s.mu, buf}), r}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// emulated returns the local emulator and a client of it that records
// what it sends.
func emulated(t *testing.T) (*emulator.Emulator, *sentKV) {
	t.Helper()
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { em.Close() })
	srv := httptest.NewServer(em)
	t.Cleanup(srv.Close)
	client, err := kvapi.New(kvapi.Options{BaseURL: srv.URL + emulator.PathPrefix, AccountID: "acct", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return em, &sentKV{KV: client}
}

// noSecret fails the test if any value or metadata in the emulator, or
// any ever sent to it, holds the secret, and returns what it holds.
func noSecret(t *testing.T, em *emulator.Emulator, sent *sentKV) map[string]emulator.Entry {
	t.Helper()
	kv := em.Snapshot("acct", testNS)
	for k, e := range kv {
		if bytes.Contains(e.Value, []byte("SECRET")) || bytes.Contains(e.Metadata, []byte("SECRET")) {
			t.Errorf("key %q holds a secret from outside the root: value %q, metadata %s", k, e.Value, e.Metadata)
		}
	}
	sent.mu.Lock()
	defer sent.mu.Unlock()
	for _, b := range sent.sent {
		if bytes.Contains(b.Bytes(), []byte("SECRET")) {
			t.Errorf("a secret from outside the root was sent: %q", b.Bytes())
		}
	}
	return kv
}

// writePaths are the engine's two ways of sending a file.
var writePaths = []struct {
	name      string
	threshold int64 // Options.BulkThreshold
	op        string
}{
	{"single PUT", -1, emulator.OpPut},
	{"bulk", 0, emulator.OpBulkPut},
}

// TestSwapBeforeSync: a one-shot sync (kvsync sync) of a snapshot whose
// file was swapped after the scan publishes nothing from outside the root
// and reports the file held back as changed since the scan; the rest of
// the tree is written. Whether the scan hashed the files or left them to
// the engine (a first publish, watcher.Options.NeedHash), and through
// single and bulk writes alike.
func TestSwapBeforeSync(t *testing.T) { testkit.Resolvers(t, testSwapBeforeSync) }

func testSwapBeforeSync(t *testing.T) {
	for _, sw := range swaps {
		for _, wp := range writePaths {
			for _, hashed := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/%s/hashed=%v", sw.name, wp.name, hashed), func(t *testing.T) {
					tr := newSwapTree(t)
					em, client := emulated(t)
					wo := watcher.Options{Root: tr.root, Prefix: testPrefix, Logger: slog.New(slog.DiscardHandler)}
					if !hashed {
						wo.NeedHash = func(string) bool { return false }
					}
					w, err := watcher.New(wo)
					if err != nil {
						t.Fatal(err)
					}
					snap, err := w.Scan(context.Background(), desired.TriggerStartup)
					if err != nil || !snap.Complete || len(snap.States) != 4 {
						t.Fatalf("scan: %d states, complete %v, %v", len(snap.States), snap.Complete, err)
					}
					sw.swap(t, tr)
					m := metrics.New(prometheus.NewRegistry(), "test").Sync("test")
					e, _ := newTestEngine(t, client, newMemStore(), func(o *Options) { o.BulkThreshold = wp.threshold; o.Metrics = m })
					rep, err := e.SyncOnce(context.Background(), snap)
					if got := m.Skipped(metrics.SkipChanged); got != 1 {
						t.Errorf("kvsync_files_skipped_total{reason=changed} = %v, want 1", got)
					}
					kv := noSecret(t, em, client)
					if !errors.Is(err, ErrSyncIncomplete) || rep.Written != 3 || rep.HeldBack != 1 || rep.Failed != 0 {
						t.Fatalf("report %+v, %v; want 3 written and the swapped file held back", rep, err)
					}
					if f := rep.Failures[0]; f.Key != testPrefix+sw.key || !f.HeldBack || !changedSinceScan(f.Err) {
						t.Fatalf("failure %+v; want %s held back as changed since the scan", f, sw.key)
					}
					if _, ok := kv[testPrefix+sw.key]; ok {
						t.Fatalf("%s was written", sw.key)
					}
					if em.Count(wp.op, 200) == 0 {
						t.Fatalf("requests %v; want the %s path", em.Counts(), wp.name)
					}
				})
			}
		}
	}
}

// TestSwapWhileRunning: the daemon (the watcher's Run feeding the engine,
// with the engine's Recheck wired to the watcher's, as kvsync run does).
// The swap happens in the write job itself (Engine.beforeRead), after
// every check the engine makes and just before it opens the file. The
// file is held back as changed since the scan, the watcher looks at it
// again, and nothing from outside the root is ever published. A sidecar
// swapped afterwards for a symlink to secret metadata is refused too.
func TestSwapWhileRunning(t *testing.T) { testkit.Resolvers(t, testSwapWhileRunning) }

func testSwapWhileRunning(t *testing.T) {
	for _, sw := range swaps {
		for _, wp := range writePaths {
			t.Run(sw.name+"/"+wp.name, func(t *testing.T) {
				tr := newSwapTree(t)
				em, client := emulated(t)
				var once sync.Once
				swapped := make(chan struct{})
				d := startDaemon(t, tr.root, client, wp.threshold, func(states []desired.State) {
					for _, st := range states {
						if st.Key == testPrefix+sw.key {
							once.Do(func() {
								sw.swap(t, tr)
								close(swapped)
							})
						}
					}
				})
				d.initial(t)
				select {
				case <-swapped:
				default:
					t.Fatal("the initial sync never opened the file to swap")
				}
				if !strings.Contains(d.logs.String(), "file changed since it was scanned") {
					t.Errorf("the swapped file was not reported as changed:\n%s", d.logs)
				}
				// The sidecar's turn, while running: its event is evaluated
				// under the symlink rules.
				link(t, filepath.Join(tr.outside, "secret.json"), filepath.Join(tr.root, "side.txt.meta.json"))
				d.barrier(t, em)
				kv := noSecret(t, em, client)
				if _, ok := kv[testPrefix+sw.key]; ok {
					t.Errorf("%s was written", sw.key)
				}
				if e := kv[testPrefix+"side.txt"]; string(e.Value) != "side file public!" || string(e.Metadata) != `{"k":"public"}` {
					t.Errorf("side.txt is %q %s; want its content and the metadata it had", e.Value, e.Metadata)
				}
				if em.Count(wp.op, 200) == 0 {
					t.Fatalf("requests %v; want the %s path", em.Counts(), wp.name)
				}
			})
		}
	}
}

// TestChangedWithoutEventRechecked: a file that changes between the scan
// and the upload where the watcher gets no event (written through a hard
// link outside the tree: inotify reports it to the directory it was
// written through) is not published as it stands; the engine's Recheck
// makes the watcher read it again, and its new content is published.
func TestChangedWithoutEventRechecked(t *testing.T) {
	for _, wp := range writePaths {
		t.Run(wp.name, func(t *testing.T) {
			tr := newSwapTree(t)
			em, client := emulated(t)
			hard := filepath.Join(tr.outside, "hard-link")
			if err := os.Link(filepath.Join(tr.root, "top.txt"), hard); err != nil {
				t.Skip("no hard links here:", err)
			}
			var once sync.Once
			d := startDaemon(t, tr.root, client, wp.threshold, func(states []desired.State) {
				for _, st := range states {
					if st.Key == testPrefix+"top.txt" {
						once.Do(func() { writeFile(t, hard, "rewritten, and longer") })
					}
				}
			})
			d.initial(t)
			d.barrier(t, em)
			kv := noSecret(t, em, client)
			if got := string(kv[testPrefix+"top.txt"].Value); got != "rewritten, and longer" {
				t.Fatalf("top.txt holds %q; want the content written after the scan", got)
			}
			if !strings.Contains(d.logs.String(), "file changed since it was scanned") {
				t.Errorf("the change was not noticed:\n%s", d.logs)
			}
		})
	}
}

// daemon is a watcher running into an engine, wired as kvsync run wires
// them.
type daemon struct {
	w       *watcher.Watcher
	e       *Engine
	logs    *testkit.Buffer
	root    string
	first   chan struct{}
	markers int
}

// firstSnapshot forwards to the engine and says when the startup scan
// went through.
type firstSnapshot struct {
	desired.Sink
	once sync.Once
	ch   chan struct{}
}

func (f *firstSnapshot) Snapshot(s desired.Snapshot) {
	f.Sink.Snapshot(s)
	f.once.Do(func() { close(f.ch) })
}

func startDaemon(t *testing.T, root string, kv kvapi.KV, threshold int64, beforeRead func([]desired.State)) *daemon {
	t.Helper()
	d := &daemon{root: root, first: make(chan struct{})}
	w, err := watcher.New(watcher.Options{
		Root: root, Prefix: testPrefix, Quiet: 20 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		RescanInterval: -1, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	e, logs := newTestEngine(t, kv, newMemStore(), func(o *Options) {
		o.Recheck = w.Recheck
		o.BulkThreshold = threshold
	})
	e.beforeRead = beforeRead
	d.w, d.e, d.logs = w, e, logs
	ctx, cancel := context.WithCancel(context.Background())
	engineDone, watcherDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(engineDone)
		e.Run(ctx)
	}()
	go func() {
		defer close(watcherDone)
		w.Run(ctx, &firstSnapshot{Sink: e, ch: d.first})
	}()
	t.Cleanup(func() {
		cancel()
		<-watcherDone
		<-engineDone
	})
	return d
}

// initial waits for the startup scan and the full sync it started.
func (d *daemon) initial(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case <-d.first:
	case <-ctx.Done():
		t.Fatal("no startup snapshot")
	}
	if err := d.e.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

// barrier writes a marker file and waits until it is in the emulator and
// the engine is idle: inotify reports events in order and the debounce
// never lets a later path fire before an earlier one, so every change made
// before the marker has then been evaluated and settled.
func (d *daemon) barrier(t *testing.T, em *emulator.Emulator) {
	t.Helper()
	d.markers++
	name := fmt.Sprintf("zz-marker-%d.txt", d.markers)
	writeFile(t, filepath.Join(d.root, name), "marker")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, ok := em.Snapshot("acct", testNS)[testPrefix+name]; ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("marker %s never reached the emulator:\n%s", name, d.logs)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := d.e.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestAllowSymlinksOutsidePinsTarget: with the explicit opt-in, a symlink
// leading out of the tree publishes its target, read beneath "/" by its
// real path; a target replaced after the scan by another file of the same
// size is held back like any file of the tree.
func TestAllowSymlinksOutsidePinsTarget(t *testing.T) {
	for _, wp := range writePaths {
		t.Run(wp.name, func(t *testing.T) {
			tr := newSwapTree(t)
			target := filepath.Join(tr.outside, "allowed.txt")
			writeFile(t, target, "allowed target!!!")
			if err := os.Symlink(target, filepath.Join(tr.root, "link.txt")); err != nil {
				t.Fatal(err)
			}
			w, err := watcher.New(watcher.Options{Root: tr.root, Prefix: testPrefix, AllowSymlinksOutside: true, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			scan := func() desired.Snapshot {
				snap, err := w.Scan(context.Background(), desired.TriggerManual)
				if err != nil || !snap.Complete {
					t.Fatalf("scan: complete %v, %v", snap.Complete, err)
				}
				return snap
			}
			snap := scan()
			for _, st := range snap.States {
				if st.Key == testPrefix+"link.txt" && st.Root != string(filepath.Separator) {
					t.Fatalf("link.txt read beneath %q, want the file system's root", st.Root)
				}
			}
			em, client := emulated(t)
			e, _ := newTestEngine(t, client, newMemStore(), func(o *Options) { o.BulkThreshold = wp.threshold })
			if rep, err := e.SyncOnce(context.Background(), snap); err != nil || rep.Written != 5 {
				t.Fatalf("%+v, %v", rep, err)
			}
			if got := string(em.Snapshot("acct", testNS)[testPrefix+"link.txt"].Value); got != "allowed target!!!" {
				t.Fatalf("link.txt holds %q", got)
			}

			snap = scan()
			replace(t, target, "SECRET-TOKEN-0123")
			em2, client2 := emulated(t)
			e2, _ := newTestEngine(t, client2, newMemStore(), func(o *Options) { o.BulkThreshold = wp.threshold })
			rep, err := e2.SyncOnce(context.Background(), snap)
			noSecret(t, em2, client2)
			if !errors.Is(err, ErrSyncIncomplete) || rep.HeldBack != 1 || rep.Written != 4 {
				t.Fatalf("%+v, %v; want link.txt held back", rep, err)
			}
		})
	}
}

// TestRecheckOnce: a state whose file is still not the one it names after
// the watcher looked again (the same identity fails twice: a file system
// whose inodes do not hold still) is handed to Recheck once, not in a
// loop; it is held back until its next change or full sync, which tries
// again.
func TestRecheckOnce(t *testing.T) {
	for _, wp := range writePaths {
		t.Run(wp.name, func(t *testing.T) {
			tr := newTree(t)
			st := tr.write("a.txt", "content")
			st.File.Ino++ // never the file's
			other := tr.write("b.txt", "other")
			rechecks := make(chan string, 10)
			kv := newFakeKV(t)
			e, logs := newTestEngine(t, kv, newMemStore(), func(o *Options) {
				o.BulkThreshold = wp.threshold
				o.BulkMinPending = 2
				o.Recheck = func(key string) { rechecks <- key }
			})
			running(t, e)
			e.Changed([]desired.State{st, other})
			waitIdle(t, e)
			if k := <-rechecks; k != st.Key {
				t.Fatalf("Recheck(%q), want %q", k, st.Key)
			}
			// The watcher's new look finds the same file, with the same
			// identity, and emits it again.
			e.Changed([]desired.State{st})
			waitIdle(t, e)
			if len(rechecks) != 0 {
				t.Fatalf("Recheck called again for %q", <-rechecks)
			}
			if !strings.Contains(logs.String(), "and again after it was scanned again") {
				t.Errorf("the second refusal is not logged:\n%s", logs)
			}
			if _, ok := kv.get(st.Key); ok {
				t.Fatal("a file that is not the one scanned was written")
			}
			mustContent(t, kv, other.Key, "other")
			// A full sync states every key afresh.
			rep, _ := e.SyncOnce(context.Background(), complete(st, other))
			if rep.HeldBack != 1 || len(rechecks) != 1 {
				t.Fatalf("full sync: %+v, %d rechecks; want the key held back and handed over again", rep, len(rechecks))
			}
		})
	}
}
