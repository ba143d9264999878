package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// ambiguousServer lets the first PUT to one path suffix take effect in the emulator
// and then drops the connection, as Faults.DropRate does half the time: the
// client cannot tell whether its write happened. Later PUTs of the key get
// laterStatus (0: passed through).
type ambiguousServer struct {
	em          *emulator.Emulator
	suffix      string // of the escaped request path
	during      func() // runs after the write took effect, before the drop
	laterStatus int
	puts        atomic.Int64
}

func (a *ambiguousServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && strings.HasSuffix(r.URL.EscapedPath(), a.suffix) {
		switch n := a.puts.Add(1); {
		case n == 1:
			a.em.ServeHTTP(httptest.NewRecorder(), r)
			a.during()
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		case a.laterStatus != 0:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(a.laterStatus)
			w.Write([]byte(`{"success":false,"errors":[{"code":10001,"message":"unavailable"}],"messages":[],"result":null}`))
			return
		}
	}
	a.em.ServeHTTP(w, r)
}

// TestChaosAmbiguousWrite pins down what TestChaosConvergence found: a write
// that took effect although its reply was lost must still be known as
// kvsync's, or KV keeps content the tree no longer has.
func TestChaosAmbiguousWrite(t *testing.T) {
	setup := func(t *testing.T, suffix string, during func(env *kvEnv), laterStatus int) (*kvEnv, string) {
		// Cloudflare's one write per second per key refuses a quick retry
		// of a write that did happen.
		em, err := emulator.New(emulator.Options{Token: testToken, Faults: emulator.Faults{PerKeyWriteLimit: true}})
		if err != nil {
			t.Fatal(err)
		}
		env := newKVEnvFrom(t, em)
		a := &ambiguousServer{em: em, suffix: suffix, laterStatus: laterStatus}
		a.during = func() { during(env) }
		front := httptest.NewServer(a)
		t.Cleanup(front.Close)
		mustWrite(t, filepath.Join(env.root, "keep.txt"), "keep")
		extra := "bulk_threshold: 0"
		if suffix == "/bulk" {
			extra = ""
		}
		env.writeConfig("max_retries: 1", extra)
		sane := env.config
		b, _ := os.ReadFile(sane)
		hostile := filepath.Join(filepath.Dir(sane), "ambiguous.yaml")
		os.WriteFile(hostile, []byte(strings.Replace(string(b), env.srv.URL, front.URL, 1)), 0o600)
		return env, hostile
	}

	t.Run("bulk write applied, reply lost, retry refused, file deleted", func(t *testing.T) {
		env, hostile := setup(t, "/bulk", func(*kvEnv) {}, 0)
		mustWrite(t, filepath.Join(env.root, "x.txt"), "written, reply lost, then deleted")
		res := runCLI(t, cliOpts{}, "sync", "--config", hostile)
		if got := string(env.em.Snapshot(testAccount, testNamespace)["x.txt"].Value); got == "" {
			t.Fatalf("test bug: the lost bulk write did not take effect\n%s", res)
		}
		t.Logf("first sync (bulk applied, connection dropped, retry refused by the per-key limit):\n%s", res)
		os.Remove(filepath.Join(env.root, "x.txt"))
		// Waits out the emulator's one write per second per key on purpose,
		// so the next sync's write is not refused; not an assertion.
		time.Sleep(time.Second)
		// The file is gone, so a sync against a sane API must leave only keep.txt.
		res = runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code != exitOK {
			t.Fatalf("second sync: want exit 0\n%s", res)
		}
		if diffs := diffKV(env.em, expectTree(t, env.root, nil)); len(diffs) > 0 {
			t.Fatalf("KV keeps a key kvsync wrote for a file that is gone: %v", diffs)
		}
	})

	t.Run("file reverted after retries ran out", func(t *testing.T) {
		x := func(env *kvEnv) string { return filepath.Join(env.root, "x.txt") }
		env, hostile := setup(t, "/values/x.txt", func(*kvEnv) {}, http.StatusServiceUnavailable)
		mustWrite(t, x(env), "version A")
		syncOK(t, env, cliOpts{}) // A is written and recorded
		// Waits out the per-key limit on purpose, so B's write takes
		// effect; not an assertion.
		time.Sleep(time.Second)
		mustWrite(t, x(env), "version B")
		res := runCLI(t, cliOpts{}, "sync", "--config", hostile)
		if res.code != exitSyncFailed {
			t.Fatalf("sync whose write of B got no reply, then 503: want exit 1\n%s", res)
		}
		if got := string(env.em.Snapshot(testAccount, testNamespace)["x.txt"].Value); got != "version B" {
			t.Fatalf("test bug: the lost write did not take effect (KV holds %q)", got)
		}
		mustWrite(t, x(env), "version A")
		time.Sleep(time.Second) // waits out the per-key limit on purpose; not an assertion
		res = runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code != exitOK {
			t.Fatalf("sync after reverting to A: want exit 0\n%s", res)
		}
		if diffs := diffKV(env.em, expectTree(t, env.root, nil)); len(diffs) > 0 {
			t.Fatalf("the file is back to A, which kvsync recorded as written, but KV holds the lost write of B: %v", diffs)
		}
	})
}
