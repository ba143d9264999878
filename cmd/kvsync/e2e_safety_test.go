package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/kvsync/kvsync/internal/emulator"
)

// publish syncs n files under root once, so later steps have keys kvsync wrote.
func publish(t *testing.T, env *kvEnv, n int) {
	t.Helper()
	publishKeeping(t, env, n, nil)
}

// publishKeeping is publish when KV also holds keys kvsync did not write.
func publishKeeping(t *testing.T, env *kvEnv, n int, others map[string]kvEntry) {
	t.Helper()
	for i := 0; i < n; i++ {
		mustWrite(t, filepath.Join(env.root, fmt.Sprintf("f%02d.txt", i)), fmt.Sprintf("file %d", i))
	}
	if out, err := runKvsync(t, env, "sync", "--config", env.config); err != nil {
		t.Fatalf("first sync: %v\n%s", err, out)
	}
	want := expectTree(t, env.root, nil)
	for k, v := range others {
		want[k] = v
	}
	env.waitConverged(t, want, converge)
}

func TestNothingDeletedWhen(t *testing.T) {
	t.Run("the root is suddenly empty", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		env.writeConfig("", "")
		publish(t, env, 5)
		want := env.em.Snapshot(testAccount, testNamespace)
		entries, _ := os.ReadDir(env.root)
		for _, e := range entries {
			os.Remove(filepath.Join(env.root, e.Name()))
		}
		out, err := runKvsync(t, env, "sync", "--config", env.config)
		if code := exitCode(t, err); code != exitSyncFailed {
			t.Errorf("sync of a suddenly empty root exited %d, want %d", code, exitSyncFailed)
		}
		if got := len(env.em.Snapshot(testAccount, testNamespace)); got != len(want) {
			t.Fatalf("%d keys left of %d after syncing an empty root\n%s", got, len(want), out)
		}
		if !strings.Contains(out, "nothing deleted") {
			t.Errorf("the output does not say why nothing was deleted:\n%s", out)
		}
	})
	t.Run("the root is missing", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		env.writeConfig("", "")
		publish(t, env, 5)
		os.RemoveAll(env.root)
		out, err := runKvsync(t, env, "sync", "--config", env.config)
		if err == nil {
			t.Errorf("sync of a missing root exited 0:\n%s", out)
		}
		if got := len(env.em.Snapshot(testAccount, testNamespace)); got != 5 {
			t.Fatalf("%d keys left of 5 after syncing a missing root\n%s", got, out)
		}
	})
	t.Run("more than max_deletes would go", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		env.writeConfig("", "max_deletes: 10")
		publish(t, env, 20)
		for i := 0; i < 15; i++ {
			os.Remove(filepath.Join(env.root, fmt.Sprintf("f%02d.txt", i)))
		}
		out, err := runKvsync(t, env, "sync", "--config", env.config)
		if code := exitCode(t, err); code != exitSyncFailed {
			t.Errorf("sync refusing deletes over max_deletes exited %d, want %d", code, exitSyncFailed)
		}
		if got := len(env.em.Snapshot(testAccount, testNamespace)); got != 20 {
			t.Fatalf("%d keys left of 20; max_deletes 10 should have stopped all 15 deletes\n%s", got, out)
		}
		if !strings.Contains(out, "max_deletes") {
			t.Errorf("the output does not name max_deletes:\n%s", out)
		}
	})
	t.Run("the running daemon sees more than max_deletes go", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		env.writeConfig("", "max_deletes: 3")
		publish(t, env, 7)
		d := env.startDaemon()
		d.waitReady(converge)
		for i := 0; i < 5; i++ {
			os.Remove(filepath.Join(env.root, fmt.Sprintf("f%02d.txt", i)))
		}
		// Three deletions go; the other two keys are kept and said so.
		deadline := time.Now().Add(converge)
		for len(env.em.Snapshot(testAccount, testNamespace)) > 4 || !strings.Contains(d.logs.String(), "than max_deletes allows") {
			if time.Now().After(deadline) {
				t.Fatalf("after deleting 5 files with max_deletes 3: %d keys, log:\n%s",
					len(env.em.Snapshot(testAccount, testNamespace)), tail(d.logs.String(), 20))
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The two kept must stay kept, not go a little later: the barrier
		// returns once all the removals' requests have been answered.
		markers, _ := env.barrier(t, d)
		if got := len(env.em.Snapshot(testAccount, testNamespace)) - len(markers); got != 4 {
			t.Fatalf("%d keys left of 7, want 4 (2 files + 2 kept over max_deletes)", got)
		}
		// Raising the cap and reloading: the full sync deletes the rest.
		env.writeConfig("", "max_deletes: 10")
		d.cmd.Process.Signal(syscall.SIGHUP)
		env.waitConverged(t, expectTree(t, env.root, nil), converge)
		d.stop()
	})
	t.Run("the key was not written by kvsync", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		env.writeConfig("", "")
		theirs := emulator.Entry{Value: []byte("someone else's"), Metadata: []byte(`{"owner":"them"}`)}
		if err := env.em.Seed(testAccount, testNamespace, "theirs.txt", theirs); err != nil {
			t.Fatal(err)
		}
		publishKeeping(t, env, 3, map[string]kvEntry{"theirs.txt": {Value: "someone else's", Metadata: `{"owner":"them"}`}})
		os.Remove(filepath.Join(env.root, "f00.txt"))
		if out, err := runKvsync(t, env, "sync", "--config", env.config); err != nil {
			t.Fatalf("sync: %v\n%s", err, out)
		}
		got := env.em.Snapshot(testAccount, testNamespace)
		if e, ok := got["theirs.txt"]; !ok || string(e.Value) != "someone else's" || string(e.Metadata) != `{"owner":"them"}` {
			t.Fatalf("a key kvsync never wrote was changed or deleted: %+v (present %v)", e, ok)
		}
		if _, ok := got["f00.txt"]; ok {
			t.Fatal("f00.txt, written by kvsync and deleted locally, is still in KV")
		}
	})
}

// TestMetricsScrapeIsValid lints a real scrape: client_golang's promlint
// always, and promtool check metrics too where it is installed (CI installs it).
func TestMetricsScrapeIsValid(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	scrape := d.scrape()
	d.stop()

	problems, err := promlint.New(strings.NewReader(scrape)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "kvsync_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	for _, name := range []string{
		"kvsync_uploads_total", "kvsync_upload_bytes_total", "kvsync_api_requests_total",
		"kvsync_api_request_duration_seconds", "kvsync_api_retries_total", "kvsync_rate_limiter_wait_seconds",
		"kvsync_queue_depth", "kvsync_inflight_uploads", "kvsync_watched_directories", "kvsync_files_skipped_total",
		"kvsync_full_syncs_total", "kvsync_last_successful_sync_timestamp_seconds", "kvsync_build_info",
	} {
		if !strings.Contains(scrape, "\n"+name) {
			t.Errorf("scrape lacks %s", name)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is not installed; CI must install Debian's prometheus package")
		}
		t.Skip("promtool not installed (Debian package prometheus); promlint above still ran")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrape)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
