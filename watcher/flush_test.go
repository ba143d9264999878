package watcher

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/testkit"
)

// The flush tests debounce for a minute, so anything the sink gets before
// Run returns came from the flush, never from a debounce firing; the
// bounds they wait with are generous and far below that minute.
const (
	flushQuiet    = time.Minute
	flushMaxDelay = 2 * time.Minute
)

func flushOpts(t *testing.T, root string) Options {
	o := testOpts(t, root)
	o.Quiet, o.MaxDelay = flushQuiet, flushMaxDelay
	return o
}

// seenPaths collects the paths the event loop has started debouncing.
type seenPaths struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (s *seenPaths) hook(w *Watcher) {
	s.seen = make(map[string]bool)
	w.scheduled = func(rel string) {
		s.mu.Lock()
		s.seen[rel] = true
		s.mu.Unlock()
	}
}

// wait returns once every rel has been seen by the event loop.
func (s *seenPaths) wait(t *testing.T, rels ...string) {
	t.Helper()
	waitFor(t, "events for "+strings.Join(rels, ", "), func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range rels {
			if !s.seen[r] {
				return false
			}
		}
		return true
	})
}

// stopPromptly cancels Run and requires it to return well inside Quiet.
func stopPromptly(t *testing.T, r *running) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(flushQuiet / 3):
		t.Fatalf("Run did not return within %s of cancel (Quiet is %s)", flushQuiet/3, flushQuiet)
	}
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
}

func TestRunFlushOnCancel(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "old.txt", "old")
	var seen seenPaths
	r := start(t, flushOpts(t, root), seen.hook)
	m := r.sink.mark()

	write(t, root, "a.txt.meta.json", `{ "type": "greeting" }`)
	write(t, root, "a.txt", "hello")
	write(t, root, "old.txt", "new")
	write(t, root, "dir/sub.txt", "below")
	// The flush reads what is on disk when it runs, so one event per
	// path (a sidecar's counts for its file) is all it needs to be seen.
	seen.wait(t, "a.txt", "old.txt", "dir")
	stopPromptly(t, r)

	withMeta := present(root, "a.txt", "hello")
	withMeta.Metadata = json.RawMessage(`{"type":"greeting"}`)
	checkStates(t, r.sink.since(m), []desired.State{
		withMeta,
		present(root, "old.txt", "new"),
		present(root, "dir/sub.txt", "below"),
	})
	r.sink.mu.Lock()
	batches := r.sink.batches
	r.sink.mu.Unlock()
	if batches != 1 {
		t.Fatalf("the flush took %d Changed calls, want 1", batches)
	}
}

func TestRunFlushDeletion(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "gone.txt", "g")
	write(t, root, "kept.txt", "k")
	var seen seenPaths
	r := start(t, flushOpts(t, root), seen.hook)
	m := r.sink.mark()
	if err := os.Remove(filepath.Join(root, "gone.txt")); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, "gone.txt")
	stopPromptly(t, r)
	checkStates(t, r.sink.since(m), []desired.State{deleted("gone.txt")})
	if _, ok := r.sink.viewOf("kept.txt"); !ok {
		t.Fatal("kept.txt vanished from the sink's view")
	}
}

// A rescan in progress at cancel is abandoned: the sink, which runs the
// scan as it reads the snapshot, gets no more of it, and the snapshot is
// incomplete; what the scan was reading when cancelled must not count as
// emitted: the flush still delivers it.
func TestRunFlushAbandonsRescan(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "b.txt", "b")
	var seen seenPaths
	inScan := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	r := start(t, flushOpts(t, root), func(w *Watcher) {
		seen.hook(w)
		w.open = func(root *beneath.Root, rel string) (*os.File, error) {
			name := filepath.Join(root.Path(), filepath.FromSlash(rel))
			// The first time the rescan reads a.txt, hold it there
			// until the test has cancelled Run.
			if filepath.Base(name) == "a.txt" {
				once.Do(func() {
					close(inScan)
					<-release
				})
			}
			return openFile(root, rel)
		}
	})
	m := r.sink.mark()
	write(t, root, "a.txt", "new")
	seen.wait(t, "a.txt")
	r.w.Rescan(desired.TriggerManual)
	select {
	case <-inScan:
	case <-time.After(20 * time.Second):
		t.Fatal("the rescan never read a.txt")
	}
	r.cancel()
	close(release)
	stopPromptly(t, r)
	snaps := r.sink.snaps()
	if len(snaps) != 2 || !snaps[0].Complete || snaps[1].Complete {
		t.Fatalf("got %d snapshots, want the complete startup one and the rescan's, incomplete", len(snaps))
	}
	for _, st := range snaps[1].States {
		if st.Rel == "a.txt" {
			t.Errorf("the abandoned rescan handed over a.txt, read after the cancel")
		}
	}
	checkStates(t, r.sink.since(m), []desired.State{present(root, "a.txt", "new")})
}

// blockSnapshots makes a recSink's Snapshot calls wait for release.
type blockSnapshots struct {
	*recSink
	entered chan struct{}
	once    sync.Once
	release chan struct{}
}

func (b *blockSnapshots) Snapshot(s desired.Snapshot) {
	// The scan runs as the snapshot is read (its watches too): read it
	// first, then block, as a sink slow to take what the scan found.
	s = s.Collect()
	b.once.Do(func() { close(b.entered) })
	<-b.release
	b.recSink.Snapshot(s)
}

// The flush is bounded: a sink that never returns does not keep Run from
// returning, and the log says how much was not flushed.
func TestRunFlushTimeout(t *testing.T) {
	t.Parallel()
	for _, blockIn := range []string{"Changed", "Snapshot"} {
		t.Run(blockIn, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			var logs testkit.Buffer
			opts := flushOpts(t, root)
			opts.FlushTimeout = 200 * time.Millisecond
			opts.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logs, testWriter{t}), nil))
			w, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			var seen seenPaths
			seen.hook(w)
			rec := newRecSink()
			release := make(chan struct{})
			var sink desired.Sink = rec
			var bs *blockSnapshots
			if blockIn == "Snapshot" {
				bs = &blockSnapshots{recSink: rec, entered: make(chan struct{}), release: release}
				sink = bs
			} else {
				rec.block = release
			}
			r := &running{w: w, sink: rec, root: w.opts.Root, done: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			r.cancel = cancel
			go func() {
				r.err = w.Run(ctx, sink)
				close(r.done)
			}()
			t.Cleanup(func() { r.stop(t) })

			if blockIn == "Snapshot" {
				// The emitter is stuck delivering the startup snapshot.
				select {
				case <-bs.entered:
				case <-time.After(20 * time.Second):
					t.Fatal("no startup snapshot")
				}
			} else {
				waitFor(t, "startup snapshot", func() bool { return len(rec.snaps()) == 1 })
			}
			write(t, root, "late.txt", "late")
			seen.wait(t, "late.txt")
			stopPromptly(t, r)

			if !strings.Contains(logs.String(), "flush timed out") || !strings.Contains(logs.String(), "unflushed_paths=1") {
				t.Fatalf("the log does not report one unflushed path:\n%s", logs.String())
			}
			rec.mu.Lock()
			entered := rec.entered
			rec.mu.Unlock()
			// The call blocked at the deadline may still complete after
			// Run returned; wait for it, so no goroutine outlives the test.
			close(release)
			switch blockIn {
			case "Changed":
				waitFor(t, "the blocked Changed call to return", func() bool {
					rec.mu.Lock()
					defer rec.mu.Unlock()
					return rec.batches == entered
				})
			case "Snapshot":
				waitFor(t, "the blocked Snapshot call to return", func() bool { return len(rec.snaps()) == 1 })
				if entered != 0 {
					t.Fatalf("Changed was called %d times while Snapshot blocked, want 0", entered)
				}
			}
		})
	}
}

// A negative FlushTimeout skips the flush.
func TestRunNoFlush(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	opts := flushOpts(t, root)
	opts.FlushTimeout = -1
	var seen seenPaths
	r := start(t, opts, seen.hook)
	m := r.sink.mark()
	write(t, root, "late.txt", "late")
	seen.wait(t, "late.txt")
	stopPromptly(t, r)
	if got := r.sink.since(m); len(got) != 0 {
		t.Fatalf("with the flush disabled the sink got %s", fmtStates(got))
	}
}
