package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// TestRestartOnUnchangedTreeWritesNothing: the state store remembers what was
// written, so a restart on the same tree sends zero write requests.
func TestRestartOnUnchangedTreeWritesNothing(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	for i := 0; i < 50; i++ {
		mustWrite(t, filepath.Join(env.root, fmt.Sprintf("d%d/f%d.txt", i%5, i)), strings.Repeat("x", i))
	}
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	d.stop()

	before := env.writeCounts()
	d = env.startDaemon()
	// Ready means the initial full sync is over, every request it made
	// answered (the engine was idle, deletions included); the clean stop
	// then drains whatever came after. The counters are final: no sleep.
	d.waitReady(converge)
	d.stop()
	if extra := env.writesSince(before, 0); extra != "" {
		t.Fatalf("restart on an unchanged tree made write requests (%s), want none", extra)
	}
}

// TestKill9DuringUploadsConverges: a kill -9 in the middle of uploading
// leaves a state store that opens, and the next run converges.
func TestKill9DuringUploadsConverges(t *testing.T) {
	const files, letThrough = 300, 20
	env := newKVEnv(t, emulator.Faults{})
	for i := 0; i < files; i++ {
		mustWrite(t, filepath.Join(env.root, fmt.Sprintf("d%d/f%d.txt", i%7, i)), fmt.Sprintf("content %d", i))
	}
	// Single PUTs (no bulk) so the kill lands between many small writes.
	env.writeConfig("concurrency: 4\nrate: 100\nburst: 100\nbudget: 30100", "bulk_threshold: 0")
	// The emulator answers 20 writes and holds the rest unanswered: the
	// kill then always lands with writes in flight (marked pending in the
	// state store, never confirmed) and most keys not written.
	held, release := env.holdWritesAfter(t, letThrough)
	d := env.startDaemon()
	select {
	case <-held:
	case <-time.After(converge):
		t.Fatalf("no write beyond the first %d within %s", letThrough, converge)
	}
	d.kill9()
	release() // the held requests reach the emulator; their client is gone
	if n := len(env.em.Snapshot(testAccount, testNamespace)); n >= files {
		t.Fatalf("every key (%d) was written before the kill; the test did not kill mid-sync", n)
	}
	// Change the tree while kvsync is down, too.
	mustWrite(t, filepath.Join(env.root, "d0/f0.txt"), "changed while down")
	os.Remove(filepath.Join(env.root, "d1/f1.txt"))

	d = env.startDaemon()
	d.waitReady(2 * converge)
	env.waitConverged(t, expectTree(t, env.root, nil), 2*converge)
	d.stop()
}

// TestSyncUnderCloudflareBudget publishes 2,000 files one PUT each against
// the emulator's Cloudflare budget, scaled in time: the emulator allows 1,200
// requests per 10 s (as Cloudflare does per 300 s) and kvsync is configured
// with the same ratio of headroom as its defaults (1,100 per window). At most
// one 429 per budget window is tolerated.
func TestSyncUnderCloudflareBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 2,000 files at a scaled rate limit; skipped with -short")
	}
	const window = 10 * time.Second
	env := newKVEnv(t, emulator.Faults{Budget: 1200, BudgetWindow: window})
	for i := 0; i < 2000; i++ {
		mustWrite(t, filepath.Join(env.root, fmt.Sprintf("d%02d/f%04d.txt", i%40, i)), fmt.Sprintf("file %d", i))
	}
	// 1,000 per window sustained plus a burst of 100: the defaults' shape.
	rate := 1000.0 / window.Seconds()
	// api.budget is per 5 real minutes; the emulator's window is scaled, so
	// the budget that bounds kvsync's own config is scaled the same way.
	env.writeConfig(fmt.Sprintf("rate: %g\nburst: 100\nbudget: %d\nconcurrency: 8", rate, int(1200*300/window.Seconds())), "bulk_threshold: 0")
	start := time.Now()
	out, err := runKvsync(t, env, "sync", "--config", env.config)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("kvsync sync: %v\n%s", err, tail(out, 40))
	}
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	puts := env.em.Count("put", 0)
	limited := env.em.Count("put", 429)
	windows := int(took/window) + 1
	t.Logf("2,000 files: %d PUT requests, %d answered 429, in %s: %.1f requests/s against %.1f configured",
		puts, limited, took.Round(time.Millisecond), float64(puts)/took.Seconds(), rate)
	if puts < 2000 {
		t.Fatalf("%d PUT requests for 2,000 files with bulk_threshold: 0; bulk writes were not disabled", puts)
	}
	if limited > windows {
		t.Fatalf("%d requests got 429 over %d budget windows; want at most one per window", limited, windows)
	}
}

func runKvsync(t *testing.T, env *kvEnv, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(kvsyncBin, args...)
	cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
