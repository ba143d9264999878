package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// exitCode returns the process exit status carried by err (0 for nil).
func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("not an exit status: %v", err)
	}
	return ee.ExitCode()
}

// TestPlanWritesNothing: plan lists what a sync would do and sends no write.
func TestPlanWritesNothing(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("", "")
	publish(t, env, 3)
	mustWrite(t, filepath.Join(env.root, "added.txt"), "new")
	os.Remove(filepath.Join(env.root, "f00.txt"))
	before := env.writeCounts()
	out, err := runKvsync(t, env, "plan", "--config", env.config)
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, out)
	}
	for _, want := range []string{"write  added.txt", "delete f00.txt", "plan: 1 to write (", "), 1 to delete, 2 unchanged"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	// plan has exited: whatever it sent has been answered and counted.
	if extra := env.writesSince(before, 0); extra != "" {
		t.Fatalf("plan sent write or delete requests (%s)", extra)
	}
}

// TestCheckReportsProblemsOffline: check needs no API, names each problem
// and exits 1 on any, 2 on a bad config.
func TestCheckReportsProblemsOffline(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("", "")
	mustWrite(t, filepath.Join(env.root, "ok.txt"), "fine")
	if out, err := runKvsync(t, env, "check", "--config", env.config); err != nil {
		t.Fatalf("check of a good tree: %v\n%s", err, out)
	}
	mustWrite(t, filepath.Join(env.root, "page.html"), "x")
	mustWrite(t, filepath.Join(env.root, "page.html.meta.json"), `["not", "an object"]`)
	mustWrite(t, filepath.Join(env.root, strings.Repeat("k", 513)[:200], strings.Repeat("k", 200), strings.Repeat("k", 120)), "long key")
	before := len(env.em.Counts())
	out, err := runKvsync(t, env, "check", "--config", env.config)
	if code := exitCode(t, err); code != 1 {
		t.Fatalf("check exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"page.html.meta.json", "key_invalid"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if len(env.em.Counts()) != before {
		t.Error("check talked to the API")
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("syncs:\n  - dir: /tmp\n    namespace_id: n\n    expiration:\n      - match: '**'\n        ttl: 59s\n"), 0o600)
	out, err = runKvsync(t, env, "check", "--config", bad)
	if code := exitCode(t, err); code != 2 {
		t.Fatalf("check of a bad config exit %d, want 2\n%s", code, out)
	}
	if !strings.Contains(out, "bad.yaml:6") || !strings.Contains(out, "ttl") {
		t.Errorf("the error does not name the field and its line:\n%s", out)
	}
}

// TestReloadAppliesNewRules: SIGHUP re-reads the config; a new exclude and a
// new expiration rule apply without a restart, and the daemon keeps running.
func TestReloadAppliesNewRules(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, "keep.txt"), "keep")
	mustWrite(t, filepath.Join(env.root, "logs/a.log"), "log")
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)

	env.writeConfig("", "expiration:\n  - match: \"**/*.txt\"\n    ttl: 1h")
	d.cmd.Process.Signal(syscall.SIGHUP)
	// The reload rescans: the .txt key is rewritten with its new TTL.
	env.waitConverged(t, expectTree(t, env.root, func(k string) time.Duration {
		if strings.HasSuffix(k, ".txt") {
			return time.Hour
		}
		return 0
	}), converge)

	env.writeConfig("", "")
	os.WriteFile(env.config, []byte("syncs: [this is: not valid"), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	// The file is written only once the bad reload has been refused, so
	// converging proves that the daemon still watches after it.
	waitLog(t, d, "config not applied", converge)
	mustWrite(t, filepath.Join(env.root, "after-bad-reload.txt"), "still watching")
	want := expectTree(t, env.root, func(k string) time.Duration {
		if strings.HasSuffix(k, ".txt") {
			return time.Hour
		}
		return 0
	})
	env.waitConverged(t, want, converge)
	d.stop()
}
