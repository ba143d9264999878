package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/uploader"
)

// swapSecret stands for kvsync's API token in files outside the root; each
// has the size of the file of the tree whose place it takes.
const swapSecret = "SECRET-TOKEN-0123"

// swapEnv is a tree next to a directory of secrets, configured for one
// sync, and the app kvsync builds from that config (in this process, so
// the test can act between its scan and its upload).
type swapEnv struct {
	*kvEnv
	outside string
	unit    *unit
	logs    *testkit.Buffer
}

func newSwapEnv(t *testing.T) *swapEnv {
	env := &swapEnv{kvEnv: newKVEnv(t, emulator.Faults{}), logs: &testkit.Buffer{}}
	env.outside = filepath.Join(filepath.Dir(env.root), "outside")
	for rel, content := range map[string]string{
		"index.html": "public index page",
		"top.txt":    "top level public!",
		"sub/f.txt":  "sub file public!!",
	} {
		mustWrite(t, filepath.Join(env.root, filepath.FromSlash(rel)), content)
	}
	mustWrite(t, filepath.Join(env.outside, "top.txt"), swapSecret)
	mustWrite(t, filepath.Join(env.outside, "f.txt"), swapSecret)
	env.writeConfig("", "")
	t.Setenv("CLOUDFLARE_API_TOKEN", testToken)
	cf := commonFlags{cfg: config.Flags{Config: env.config}}
	a, err := newApp(context.Background(), &cf, env.logs, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	env.unit = a.units[0]
	return env
}

// swap makes top.txt a symlink to a secret and sub a symlink to the
// directory of secrets (mv sub .s; ln -s outside sub).
func (env *swapEnv) swap(t *testing.T) {
	top := filepath.Join(env.root, "top.txt")
	if err := os.Remove(top); err != nil {
		t.Error(err)
	}
	if err := os.Symlink(filepath.Join(env.outside, "top.txt"), top); err != nil {
		t.Error(err)
	}
	if err := os.Rename(filepath.Join(env.root, "sub"), filepath.Join(env.root, ".s")); err != nil {
		t.Error(err)
	}
	if err := os.Symlink(env.outside, filepath.Join(env.root, "sub")); err != nil {
		t.Error(err)
	}
}

// published fails the test if the emulator holds a secret in any value or
// metadata, or a key of the swapped files, and returns what it holds.
func (env *swapEnv) published(t *testing.T) map[string]emulator.Entry {
	t.Helper()
	kv := env.em.Snapshot(testAccount, testNamespace)
	for k, e := range kv {
		if bytes.Contains(e.Value, []byte("SECRET")) || bytes.Contains(e.Metadata, []byte("SECRET")) {
			t.Errorf("key %q holds a file from outside the root: %q %s", k, e.Value, e.Metadata)
		}
	}
	for _, k := range []string{"top.txt", "sub/f.txt"} {
		if _, ok := kv[k]; ok {
			t.Errorf("key %q of a swapped file was written", k)
		}
	}
	if string(kv["index.html"].Value) != "public index page" {
		t.Errorf("index.html not published: %v", kv)
	}
	return kv
}

// TestSecuritySwapBeforeSync is kvsync sync as cmdSync runs it, with the
// swap between its scan and its upload: the swapped files are held back,
// the run fails, and nothing from outside the root is published.
func TestSecuritySwapBeforeSync(t *testing.T) {
	env := newSwapEnv(t)
	u := env.unit
	snap, err := u.watcher.Scan(context.Background(), desired.TriggerStartup)
	if err != nil || len(snap.States) != 3 {
		t.Fatalf("scan: %d states, %v", len(snap.States), err)
	}
	env.swap(t)
	rep, err := u.engine.SyncOnce(context.Background(), snap)
	if !errors.Is(err, uploader.ErrSyncIncomplete) || rep.HeldBack != 2 || rep.Written != 1 {
		t.Fatalf("report %+v, %v; want the two swapped files held back", rep, err)
	}
	env.published(t)
}

// swapOnSnapshot swaps the tree the first time a snapshot passes (the
// scan is done, the upload not begun), forwards it to the engine and
// returns only once the engine has settled it. Until then the watcher,
// whose sink calls never overlap, evaluates none of the events the swap
// caused: the engine works from the scan's states alone, as it would if
// it were faster than the watcher's debounce.
type swapOnSnapshot struct {
	engine *uploader.Engine
	once   sync.Once
	swap   func()
	done   chan struct{}
	err    error
}

func (s *swapOnSnapshot) Changed(states []desired.State) { s.engine.Changed(states) }

func (s *swapOnSnapshot) Snapshot(snap desired.Snapshot) {
	// The scan runs as its snapshot is read: read it whole first, so the
	// swap comes between the scan and the upload.
	snap = snap.Collect()
	first := false
	s.once.Do(func() { s.swap(); first = true })
	s.engine.Snapshot(snap)
	if first {
		ctx, cancel := context.WithTimeout(context.Background(), converge)
		s.err = s.engine.WaitIdle(ctx)
		cancel()
		close(s.done)
	}
}

// TestSecuritySwapWhileRunning is kvsync run's pipeline as newUnit wires
// it (the watcher's Run into the engine, the engine's Recheck into the
// watcher), with the swap between the startup scan and its upload.
func TestSecuritySwapWhileRunning(t *testing.T) {
	env := newSwapEnv(t)
	u := env.unit
	ectx, stopEngine := context.WithCancel(context.Background())
	wctx, stopWatcher := context.WithCancel(context.Background())
	engineDone, watcherDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(engineDone)
		u.engine.Run(ectx)
	}()
	sink := &swapOnSnapshot{engine: u.engine, swap: func() { env.swap(t) }, done: make(chan struct{})}
	go func() {
		defer close(watcherDone)
		u.watcher.Run(wctx, sink)
	}()
	defer func() {
		stopWatcher()
		<-watcherDone
		stopEngine()
		<-engineDone
	}()
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	select {
	case <-sink.done:
	case <-ctx.Done():
		t.Fatal("no startup snapshot")
	}
	if sink.err != nil {
		t.Fatal(sink.err)
	}
	// Checked now, too: the watcher's evaluation of the swap could delete
	// a key written from outside the root before the end, hiding the leak.
	env.published(t)
	if !strings.Contains(env.logs.String(), "file changed since it was scanned") {
		t.Errorf("the swapped files were not reported as changed:\n%s", env.logs)
	}
	// The barrier: a file written after the swap. Events come in order and
	// the debounce never lets a later path go before an earlier one, so
	// once it is published and the engine idle, the swap has been
	// evaluated and settled.
	mustWrite(t, filepath.Join(env.root, "marker.txt"), "marker")
	for {
		if _, ok := env.em.Snapshot(testAccount, testNamespace)["marker.txt"]; ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the marker never arrived:\n%s", env.logs)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := u.engine.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	env.published(t)
}
