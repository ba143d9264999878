package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// converge is the window a change gets to reach KV: max_delay (1s) plus a
// margin for a loaded 2-core CI machine.
const converge = 15 * time.Second

// TestRunFollowsEveryChange drives the real daemon through every kind of
// change the watcher handles and, after each, asserts that the emulator holds
// exactly the tree: keys, bytes, metadata and expirations.
func TestRunFollowsEveryChange(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	outside := t.TempDir()
	mustWrite(t, filepath.Join(env.root, "index.html"), "<h1>hello</h1>")
	mustWrite(t, filepath.Join(env.root, "index.html.meta.json"), `{"content-type": "text/html"}`)
	mustWrite(t, filepath.Join(env.root, "a/b/deep.txt"), "deep")
	mustWrite(t, filepath.Join(env.root, "cache/page.txt"), "short-lived")
	env.writeConfig("", "expiration:\n  - match: \"cache/**\"\n    ttl: 2h")
	ttl := func(key string) time.Duration {
		if strings.HasPrefix(key, "cache/") {
			return 2 * time.Hour
		}
		return 0
	}
	expect := func() map[string]kvEntry { return expectTree(t, env.root, ttl) }

	d := env.startDaemon()
	d.waitReady(converge)
	env.waitConverged(t, expect(), converge)

	steps := []struct {
		name   string
		change func(t *testing.T)
		// unchanged: the change must not reach KV (held-back or skipped
		// input), so KV must still hold what it held before it.
		unchanged bool
	}{
		{name: "create", change: func(t *testing.T) { mustWrite(t, filepath.Join(env.root, "new.txt"), "new") }},
		{name: "write", change: func(t *testing.T) { mustWrite(t, filepath.Join(env.root, "new.txt"), "new, longer content") }},
		{name: "truncate", change: func(t *testing.T) { os.Truncate(filepath.Join(env.root, "new.txt"), 0) }},
		{name: "remove", change: func(t *testing.T) { os.Remove(filepath.Join(env.root, "new.txt")) }},
		{name: "rename within the tree", change: func(t *testing.T) {
			os.Rename(filepath.Join(env.root, "a/b/deep.txt"), filepath.Join(env.root, "a/moved.txt"))
		}},
		{name: "rename into the tree", change: func(t *testing.T) {
			mustWrite(t, filepath.Join(outside, "incoming.txt"), "from outside")
			os.Rename(filepath.Join(outside, "incoming.txt"), filepath.Join(env.root, "incoming.txt"))
		}},
		{name: "rename out of the tree", change: func(t *testing.T) {
			os.Rename(filepath.Join(env.root, "incoming.txt"), filepath.Join(outside, "gone.txt"))
		}},
		{name: "rename a whole directory", change: func(t *testing.T) {
			for i := 0; i < 20; i++ {
				mustWrite(t, filepath.Join(env.root, "dir1", fmt.Sprintf("sub%d", i%3), fmt.Sprintf("f%02d.txt", i)), "file")
			}
			env.waitConverged(t, expect(), converge)
			os.Rename(filepath.Join(env.root, "dir1"), filepath.Join(env.root, "dir2"))
		}},
		{name: "atomic save through a temp file", change: func(t *testing.T) {
			tmp := filepath.Join(env.root, ".index.html.swp")
			mustWrite(t, tmp, "<h1>saved atomically</h1>")
			os.Rename(tmp, filepath.Join(env.root, "index.html"))
		}},
		{name: "sidecar created", change: func(t *testing.T) {
			mustWrite(t, filepath.Join(env.root, "a/moved.txt.meta.json"), `{"k": [1, 2]}`)
		}},
		{name: "sidecar changed", change: func(t *testing.T) {
			mustWrite(t, filepath.Join(env.root, "a/moved.txt.meta.json"), `{"k": "v2"}`)
		}},
		{name: "sidecar deleted", change: func(t *testing.T) { os.Remove(filepath.Join(env.root, "a/moved.txt.meta.json")) }},
		{name: "symlink to a file inside the tree", change: func(t *testing.T) {
			mustWrite(t, filepath.Join(env.root, "target.txt"), "the link's target")
			os.Symlink(filepath.Join(env.root, "target.txt"), filepath.Join(env.root, "link.txt"))
		}},
		{name: "fifo is skipped", unchanged: true, change: func(t *testing.T) { syscall.Mkfifo(filepath.Join(env.root, "pipe"), 0o644) }},
		{name: "invalid sidecar holds its file back", unchanged: true, change: func(t *testing.T) {
			mustWrite(t, filepath.Join(env.root, "index.html"), "<h1>changed while its sidecar is broken</h1>")
			mustWrite(t, filepath.Join(env.root, "index.html.meta.json"), `{not json`)
		}},
		{name: "fixed sidecar releases it", change: func(t *testing.T) {
			mustWrite(t, filepath.Join(env.root, "index.html.meta.json"), `{"content-type": "text/html", "fixed": true}`)
		}},
		{name: "file over 25 MiB is held back", unchanged: true, change: func(t *testing.T) {
			f, err := os.OpenFile(filepath.Join(env.root, "a/moved.txt"), os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(25<<20 + 1); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, func(t *testing.T) {
			if !st.unchanged {
				st.change(t)
				env.waitConverged(t, expect(), converge)
				return
			}
			held := expect()
			before := env.writeCounts()
			st.change(t)
			// Not a sleep: the barrier returns once anything the change
			// made the daemon send has been answered (see barrier).
			markers, n := env.barrier(t, d)
			if extra := env.writesSince(before, n); extra != "" {
				t.Errorf("the change made write requests (%s)", extra)
			}
			if diffs := diffKV(env.em, with(held, markers)); len(diffs) > 0 {
				t.Errorf("KV changed:\n  %s", strings.Join(diffs, "\n  "))
			}
		}) {
			t.FailNow()
		}
	}

	t.Run("chmod alone writes nothing", func(t *testing.T) {
		before := env.writeCounts()
		// target.txt, a published file: a/moved.txt is held back by now
		// (over 25 MiB), which would prove nothing about chmod.
		os.Chmod(filepath.Join(env.root, "target.txt"), 0o600)
		_, n := env.barrier(t, d)
		if extra := env.writesSince(before, n); extra != "" {
			t.Fatalf("chmod caused write requests (%s)", extra)
		}
	})
	d.stop()
}
