package watcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// recSink records everything Run delivers and keeps a view of the desired
// state as a sink would: a complete snapshot replaces it, changes patch it.
type recSink struct {
	mu        sync.Mutex
	snapshots []desired.Snapshot
	changed   []desired.State // every changed state, in order
	batches   int
	view      map[string]desired.State
	block     chan struct{} // when set, Changed waits for it to close
	entered   int           // Changed calls begun, blocked or not
}

func newRecSink() *recSink { return &recSink{view: make(map[string]desired.State)} }

func (s *recSink) Snapshot(snap desired.Snapshot) {
	snap = snap.Collect() // runs the scan, before the lock: Changed may wait on it
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snapshots = append(s.snapshots, snap)
	if snap.Complete {
		clear(s.view)
	}
	for _, st := range snap.States {
		s.view[st.Key] = st
	}
}

func (s *recSink) Changed(states []desired.State) {
	s.mu.Lock()
	block := s.block
	s.entered++
	s.mu.Unlock()
	if block != nil {
		<-block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	for _, st := range states {
		s.changed = append(s.changed, st)
		if st.Deleted {
			delete(s.view, st.Key)
		} else {
			s.view[st.Key] = st
		}
	}
}

// mark returns a position in the changed log.
func (s *recSink) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.changed)
}

func (s *recSink) since(m int) []desired.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.changed[m:])
}

func (s *recSink) viewOf(key string) (desired.State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.view[key]
	return st, ok
}

func (s *recSink) viewLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.view)
}

func (s *recSink) snaps() []desired.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.snapshots)
}

// waitFor polls cond until it holds or a generous timeout passes; it never
// asserts on speed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sha(content string) string {
	h := sha256.Sum256([]byte(content))
	return hex.EncodeToString(h[:])
}

func write(t testing.TB, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testOpts are Options for scenario tests: a short debounce, no periodic
// rescans unless a test asks, and logs in the test output.
func testOpts(t testing.TB, root string) Options {
	return Options{
		Root:           root,
		Quiet:          50 * time.Millisecond,
		MaxDelay:       300 * time.Millisecond,
		RescanInterval: -1,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// running is a Watcher under Run with its recording sink.
type running struct {
	w       *Watcher
	sink    *recSink
	root    string
	barrier atomic.Int64
	// cancel ends Run's ctx; done closes when Run has returned err.
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// stop cancels Run's ctx and waits, generously, for Run to return.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("Run: %v", r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("Run did not return after cancel")
	}
}

// start runs a Watcher on opts until the test ends, waiting for the
// startup snapshot. setup may adjust the Watcher before Run.
func start(t *testing.T, opts Options, setup func(*Watcher)) *running {
	t.Helper()
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(w)
	}
	r := &running{w: w, sink: newRecSink(), root: w.opts.Root, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		r.err = w.Run(ctx, r.sink)
		close(r.done)
	}()
	t.Cleanup(func() { r.stop(t) })
	waitFor(t, "startup snapshot", func() bool { return len(r.sink.snaps()) > 0 })
	return r
}

const barrierPrefix = "zz-barrier-"

// sync writes a fresh barrier file and waits for its state. inotify
// delivers events in order and the debounce never lets a later path fire
// before an earlier one, so once the barrier is out, every change made
// before it has been evaluated. It returns what was emitted from m up to
// the barrier, barriers left out, sorted by key then deletion.
func (r *running) sync(t *testing.T, m int) []desired.State {
	t.Helper()
	name := fmt.Sprintf("%s%d", barrierPrefix, r.barrier.Add(1))
	write(t, r.root, name, "")
	key := r.w.opts.Prefix + name
	var out []desired.State
	waitFor(t, "barrier "+name, func() bool {
		out = out[:0]
		found := false
		for _, st := range r.sink.since(m) {
			if st.Key == key {
				found = true
			}
			if !strings.HasPrefix(strings.TrimPrefix(st.Key, r.w.opts.Prefix), barrierPrefix) {
				out = append(out, st)
			}
		}
		return found
	})
	sortStates(out)
	return out
}

func sortStates(s []desired.State) {
	sort.SliceStable(s, func(i, j int) bool {
		if s[i].Key != s[j].Key {
			return s[i].Key < s[j].Key
		}
		return s[i].Deleted && !s[j].Deleted
	})
}

// present is the expected state of a published file with content.
func present(root, rel, content string) desired.State {
	return desired.State{Key: rel, Path: filepath.Join(root, filepath.FromSlash(rel)), Hash: sha(content), Size: int64(len(content))}
}

func deleted(key string) desired.State { return desired.State{Key: key, Deleted: true} }

// checkStates compares emitted states with expected ones; for held-back
// states it checks that Err wraps wantErr when set, else only that it is set.
func checkStates(t *testing.T, got, want []desired.State) {
	t.Helper()
	sortStates(want)
	if len(got) != len(want) {
		t.Fatalf("got %d states, want %d:\ngot  %s\nwant %s", len(got), len(want), fmtStates(got), fmtStates(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		// Where the bytes are read from must be the path emitted or, for a
		// symlink, what it resolves to, and the file pinned; the identity
		// itself is the file system's to pick.
		from := filepath.Join(g.Root, filepath.FromSlash(g.Rel))
		resolved, _ := filepath.EvalSymlinks(g.Path)
		if !g.Deleted && g.Err == nil && (from != g.Path && from != resolved || g.File == (beneath.Identity{})) {
			t.Fatalf("state %d: Root %q Rel %q File %+v do not name Path %q", i, g.Root, g.Rel, g.File, g.Path)
		}
		g.Root, g.Rel, g.File = "", "", beneath.Identity{}
		gotErr, wantErr := g.Err != nil, w.Err != nil
		g.Err, w.Err = nil, nil
		if gotErr != wantErr || fingerprintOf(g) != fingerprintOf(w) {
			t.Fatalf("state %d:\ngot  %s\nwant %s", i, fmtStates(got[i:i+1]), fmtStates(want[i:i+1]))
		}
	}
}

func fmtStates(states []desired.State) string {
	var b strings.Builder
	for _, s := range states {
		fmt.Fprintf(&b, "\n  {Key:%q Deleted:%v Path:%q Size:%d Hash:%.8s Meta:%s Exp:%v Err:%v}", s.Key, s.Deleted, s.Path, s.Size, s.Hash, s.Metadata, s.Expiration, s.Err)
	}
	return b.String()
}

// countingOpen wraps openFile and counts the files it opens.
type countingOpen struct {
	mu    sync.Mutex
	names []string
}

func (c *countingOpen) open(root *beneath.Root, rel string) (*os.File, error) {
	name := filepath.Join(root.Path(), filepath.FromSlash(rel))
	c.mu.Lock()
	c.names = append(c.names, name)
	c.mu.Unlock()
	return openFile(root, rel)
}

func (c *countingOpen) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.names)
}

var _ = io.EOF
