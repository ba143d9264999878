package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
)

// TestExitCodes: every exit status README's table lists, each from the
// situation the table gives for it.
func TestExitCodes(t *testing.T) {
	t.Run("0 clean sync", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
		env.writeConfig("", "")
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code != exitOK {
			t.Fatalf("want exit 0\n%s", res)
		}
		// A first run with no state store is normal: nothing reads as a fault.
		if strings.Contains(res.stderr, "level=WARN") || strings.Contains(res.stderr, "level=ERROR") || strings.Contains(res.stderr, "no usable") {
			t.Errorf("a clean first sync warns:\n%s", res)
		}
	})
	t.Run("1 held back, and check's problems", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
		mustWrite(t, filepath.Join(env.root, "a.txt.meta.json"), "{not json")
		env.writeConfig("", "")
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code != exitSyncFailed {
			t.Fatalf("sync: want exit 1\n%s", res)
		}
		// Reported once in the log, with its reason, and once in the
		// summary; the summary line says 1 file, no other line repeats it.
		held := filepath.Join(env.root, "a.txt")
		warned := 0
		for _, l := range strings.Split(res.stderr, "\n") {
			if !strings.Contains(l, "level=DEBUG") && strings.Contains(l, "path="+held+" ") {
				warned++
			}
		}
		if warned != 1 {
			t.Errorf("the log names the held-back file %d times above debug level, want once:\n%s", warned, res)
		}
		if n := strings.Count(res.stdout, "("+held+")"); n != 1 || !strings.Contains(res.stdout, "1 held back") {
			t.Errorf("the summary names the held-back file %d times, want once:\n%s", n, res)
		}
		chk := runCLI(t, cliOpts{}, "check", "--config", env.config)
		if chk.code != exitSyncFailed || !strings.Contains(chk.stderr, "kvsync check: problems found: 1") {
			t.Fatalf("check: want exit 1 and its problem count\n%s", chk)
		}
		// check syncs nothing: it must not speak of keys not synced.
		if s := chk.stdout + chk.stderr; strings.Contains(s, "not synced") || strings.Contains(s, "published") {
			t.Errorf("check talks as if it had synced:\n%s", chk)
		}
	})
	t.Run("2 invalid config in check", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		env.writeConfig("", "expiration:\n  - match: '*'\n    at: 2020-01-01T00:00:00Z")
		for _, cmd := range []string{"check", "sync"} {
			res := runCLI(t, cliOpts{}, cmd, "--config", env.config)
			if res.code != exitUsage || strings.Count(res.stderr, "syncs[0].expiration[0].at") != 1 || !strings.Contains(res.stderr, "has passed") {
				t.Errorf("%s with an `at` in the past: want exit 2 naming the rule once\n%s", cmd, res)
			}
		}
	})
	t.Run("2 token_file missing in check", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		missing := filepath.Join(t.TempDir(), "no-token")
		env.writeConfig("token_file: "+missing, "")
		res := runCLI(t, cliOpts{env: []string{"CLOUDFLARE_API_TOKEN="}}, "check", "--config", env.config)
		if res.code != exitUsage || !strings.Contains(res.stderr, "api.token_file") {
			t.Fatalf("check with a missing token_file: want exit 2 naming api.token_file\n%s", res)
		}
		// No credentials configured at all is only a warning offline.
		env.writeConfig("", "")
		res = runCLI(t, cliOpts{env: []string{"CLOUDFLARE_API_TOKEN="}}, "check", "--config", env.config)
		if res.code != exitOK || !strings.Contains(res.stdout, "warning:") {
			t.Fatalf("check with no credentials source: want exit 0 with a warning\n%s", res)
		}
	})
	t.Run("3 state store held by a daemon", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
		env.writeConfig("", "")
		d := env.startDaemon()
		d.waitReady(converge)
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code != exitRuntimeFail || !strings.Contains(res.stderr, "in use by another kvsync") || !strings.Contains(res.stderr, "kvsync plan") {
			t.Fatalf("sync beside the daemon: want exit 3 saying who holds the store and what to do\n%s", res)
		}
		d.stop()
	})
	t.Run("3 metrics address in use", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
		env.writeConfig("", "")
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config, "--metrics-listen", busy.Addr().String())
		if res.code != exitRuntimeFail || !strings.Contains(res.stderr, busy.Addr().String()) || !strings.Contains(res.stderr, "address already in use") {
			t.Fatalf("sync --metrics-listen on a busy port: want exit 3 naming it\n%s", res)
		}
		if got := env.em.Snapshot(testAccount, testNamespace); len(got) != 0 {
			t.Errorf("sync wrote %d keys although it could not serve its metrics", len(got))
		}
	})
	t.Run("3 state directory cannot be made", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		file := filepath.Join(t.TempDir(), "a-file")
		mustWrite(t, file, "not a directory")
		env.stateDir = filepath.Join(file, "state")
		env.writeConfig("", "")
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code != exitRuntimeFail || !strings.Contains(res.stderr, "state directory") {
			t.Fatalf("want exit 3 naming the state directory\n%s", res)
		}
	})
	t.Run("4 run stopped during a 429 pause", func(t *testing.T) {
		// Three requests a minute: the listing and two writes, then a
		// 429 whose Retry-After outlasts the 30 s drain.
		env := newKVEnv(t, emulator.Faults{Budget: 3, BudgetWindow: time.Hour})
		for i := range 10 {
			mustWrite(t, filepath.Join(env.root, fmt.Sprintf("f%d.txt", i)), "x")
		}
		env.writeConfig("", "bulk_threshold: 0")
		d := env.startDaemon()
		waitLog(t, d, "KV API rate limit hit", converge)
		start := time.Now()
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-d.exited:
			if code := exitCode(t, err); code != exitInterrupted {
				t.Fatalf("exit %d, want %d\n%s", code, exitInterrupted, tail(d.logs.String(), 20))
			}
		case <-time.After(25 * time.Second):
			t.Fatalf("run still waiting 25 s after SIGTERM in a pause longer than its drain\n%s", tail(d.logs.String(), 20))
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("run took %s to stop in a pause it cannot outwait", took)
		}
		if n := strings.Count(d.logs.String(), "stopped by a signal before all work was done"); n != 1 {
			t.Errorf("the unfinished stop is reported %d times, want once\n%s", n, tail(d.logs.String(), 20))
		}
	})
}

// TestReadyzNeedsAcceptedSync: a daemon whose initial sync the API refused
// (a wrong token) is not ready, and says why; the same daemon with the
// right token is.
func TestReadyzNeedsAcceptedSync(t *testing.T) {
	em, err := emulator.New(emulator.Options{Token: "not-the-test-token"})
	if err != nil {
		t.Fatal(err)
	}
	env := newKVEnvFrom(t, em)
	for _, f := range []string{"a.txt", "b.txt", "c.txt"} {
		mustWrite(t, filepath.Join(env.root, f), f)
	}
	env.writeConfig("", "")
	d := env.startDaemon()
	waitLog(t, d, "not ready until they are written", converge)
	resp, err := http.Get(d.metrics + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with every write refused, want 503", resp.StatusCode)
	}
	if strings.Contains(d.logs.String(), "initial sync done") {
		t.Errorf("the daemon says its initial sync is done:\n%s", tail(d.logs.String(), 20))
	}
	d.stop()

	good := newKVEnv(t, emulator.Faults{})
	good.root, good.stateDir = env.root, env.stateDir
	good.writeConfig("", "")
	d = good.startDaemon()
	d.waitReady(converge)
	d.stop()
}

// TestPlanBesideDaemon: plan works while the daemon holds the state store,
// from the namespace's listing, and says so; it writes nothing.
func TestPlanBesideDaemon(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	// The daemon's write of the new file is held: KV does not have it yet.
	held, release := env.holdWritesAfter(t, 0)
	mustWrite(t, filepath.Join(env.root, "b.txt"), "b")
	select {
	case <-held:
	case <-time.After(converge):
		t.Fatal("the daemon did not try to write the new file")
	}
	writes := env.writes()
	res := runCLI(t, cliOpts{}, "plan", "--config", env.config)
	if res.code != exitOK {
		t.Fatalf("plan beside the daemon: want exit 0\n%s", res)
	}
	if !strings.Contains(res.stdout, "write  b.txt") || strings.Contains(res.stdout, "write  a.txt") || !strings.Contains(res.stdout, "1 to write (1 B), 0 to delete, 1 unchanged") {
		t.Errorf("plan does not foresee the one new file:\n%s", res)
	}
	if !strings.Contains(res.stderr, "planning from the namespace listing") {
		t.Errorf("plan does not say it plans from the listing:\n%s", res)
	}
	if env.writes() != writes {
		t.Error("plan wrote")
	}
	res = runCLI(t, cliOpts{}, "plan", "--config", env.config, "--trust-state")
	if res.code != exitRuntimeFail || !strings.Contains(res.stderr, "plan without --trust-state") {
		t.Errorf("plan --trust-state beside the daemon: want exit 3 saying what to do\n%s", res)
	}
	release()
	d.stop()
}

// TestPlanForeseesUnreadable: what sync holds back for being unreadable,
// plan counts as held back too, naming it, on a first publish as well.
func TestPlanForeseesUnreadable(t *testing.T) {
	env, o := unprivilegedEnv(t, func(root string) {
		mustWrite(t, filepath.Join(root, "ok.txt"), "ok")
		mustWrite(t, filepath.Join(root, "sub/a.txt"), "a")
	})
	secret := filepath.Join(env.root, "sub/a.txt")
	if err := os.Chmod(secret, 0); err != nil {
		t.Fatal(err)
	}
	plan := runCLI(t, o, "plan", "--config", env.config)
	if plan.code != exitOK || !strings.Contains(plan.stdout, "1 to write (2 B), 0 to delete, 0 unchanged, 1 held back") || !strings.Contains(plan.stdout, "hold   sub/a.txt ("+secret+")") {
		t.Fatalf("plan does not foresee the unreadable file:\n%s", plan)
	}
	res := runCLI(t, o, "sync", "--config", env.config)
	if res.code != exitSyncFailed || !strings.Contains(res.stdout, "1 written") || !strings.Contains(res.stdout, "1 held back") {
		t.Fatalf("sync did not do what plan said:\n%s", res)
	}
}

// TestSyncSummaryNamesReasons: the summary on stdout counts what did not
// reach KV and says why, for a key too long and for refused deletions.
func TestSyncSummaryNamesReasons(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	// 608 bytes, over KV's 512; each name within the file system's 255.
	long := strings.Repeat("d", 200) + "/" + strings.Repeat("e", 200) + "/" + strings.Repeat("f", 202) + ".txt"
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
	env.writeConfig("", "")
	syncOK(t, env, cliOpts{})

	mustWrite(t, filepath.Join(env.root, long), "x")
	res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
	lines := strings.Split(res.stdout, "\n")
	if res.code != exitSyncFailed || !strings.Contains(lines[0], "1 skipped") || !strings.Contains(res.stdout, "name cannot be a key") {
		t.Fatalf("a key over 512 bytes: want exit 1, 1 skipped and why\n%s", res)
	}
	for _, w := range []string{"written", "unchanged", "deleted", "held back", "skipped", "refused", "failed"} {
		if !strings.Contains(lines[0], w) {
			t.Errorf("the summary line does not count %q: %s", w, lines[0])
		}
	}
	if strings.Contains(res.stderr, "some keys were not synced") {
		t.Errorf("stderr leads with the old vague phrase:\n%s", res)
	}

	for _, f := range []string{"a.txt", strings.Repeat("d", 200)} {
		if err := os.RemoveAll(filepath.Join(env.root, f)); err != nil {
			t.Fatal(err)
		}
	}
	res = runCLI(t, cliOpts{}, "sync", "--config", env.config)
	if res.code != exitSyncFailed || !strings.Contains(res.stdout, "1 refused") || !strings.Contains(res.stdout, "deletions refused") {
		t.Fatalf("an emptied tree: want exit 1, 1 refused and why\n%s", res)
	}
}

// TestUnitAcceptsInterruptedStop: the systemd unit counts run's exit status
// for a stop with work left undone as success, as README says: the next
// start writes what is left, so `systemctl stop` during a 429 pause must
// not leave the unit failed.
func TestUnitAcceptsInterruptedStop(t *testing.T) {
	unit, err := os.ReadFile("../../deploy/systemd/kvsync.service")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("\nSuccessExitStatus=%d\n", exitInterrupted)
	if !strings.Contains(string(unit), want) {
		t.Errorf("deploy/systemd/kvsync.service lacks %q", strings.TrimSpace(want))
	}
}

// TestRunLogsEachBatch: a single file changed under the daemon gets one
// info line, naming the batch's counts.
func TestRunLogsEachBatch(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	mustWrite(t, filepath.Join(env.root, "b.txt"), "b")
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	waitLog(t, d, "changes queued", converge)
	var lines []string
	for _, l := range strings.Split(d.logs.String(), "\n") {
		if strings.Contains(l, "level=INFO") && strings.Contains(l, "changes queued") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "changed=1") {
		t.Errorf("want one info line for the one changed file, got %d:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	d.stop()
}

// TestSyncServesMetrics: sync --metrics-listen serves /metrics while it
// runs, and /readyz says 503: a one-shot sync is never a ready daemon.
func TestSyncServesMetrics(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{Latency: 3 * time.Second})
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
	env.writeConfig("", "")
	cmd := execKvsync(env, "sync", "--config", env.config, "--metrics-listen", "127.0.0.1:0")
	logs := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	var addr string
	for deadline := time.Now().Add(converge); addr == ""; {
		if m := metricsAddrRE.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("sync did not say where it serves metrics:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("/metrics while sync runs: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "kvsync_build_info") {
		t.Errorf("/metrics = %d without kvsync's series", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + addr + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz during a one-shot sync: %v %v, want 503", resp, err)
	} else {
		resp.Body.Close()
	}
	if err := <-done; err != nil {
		t.Fatalf("sync: %v\n%s", err, logs)
	}
}
