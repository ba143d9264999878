package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
)

// Hostile input: every case ends with a clear error naming the file, key or
// field at fault, and with nothing good lost from KV.

// TestHostileConfig: a bad value stops check and sync with exit 2 and a
// message naming the field and the line it is on.
func TestHostileConfig(t *testing.T) {
	cases := []struct {
		name string
		// line is inserted into a valid config; marker finds its line.
		api, sync string
		field     string
		marker    string
	}{
		{name: "negative concurrency", api: "concurrency: -1", field: "api.concurrency", marker: "concurrency: -1"},
		{name: "negative rate", api: "rate: -3", field: "api.rate", marker: "rate: -3"},
		{name: "negative max_retries", api: "max_retries: -2", field: "api.max_retries", marker: "max_retries: -2"},
		{name: "negative max_deletes", sync: "max_deletes: -5", field: "syncs[0].max_deletes", marker: "max_deletes: -5"},
		{name: "negative quiet", sync: "quiet: -1s", field: "syncs[0].quiet", marker: "quiet: -1s"},
		{name: "ttl of 59 seconds", sync: "expiration:\n  - match: \"**\"\n    ttl: 59s", field: "syncs[0].expiration[0].ttl", marker: "ttl: 59s"},
		{name: "default ttl of 59 seconds", sync: "default_expiration:\n  ttl: 59", field: "syncs[0].default_expiration.ttl", marker: "ttl: 59"},
		{name: "bad exclude glob", sync: "exclude:\n  - \"[a-\"", field: "syncs[0].exclude[0]", marker: `"[a-"`},
		{name: "bad include glob", sync: "include:\n  - \"{a,b\"", field: "syncs[0].include[0]", marker: `"{a,b"`},
		{name: "unknown sync field", sync: "colour: blue", field: "colour", marker: "colour: blue"},
		{name: "unknown api field", api: "insecure_skip_verify: true", field: "insecure_skip_verify", marker: "insecure_skip_verify"},
		{name: "rate over budget", api: "rate: 100\nbudget: 1200", field: "api.rate", marker: "rate: 100"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newKVEnv(t, emulator.Faults{})
			mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
			env.writeConfig(tc.api, tc.sync)
			b, _ := os.ReadFile(env.config)
			line := 0
			for i, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, tc.marker) {
					line = i + 1
					break
				}
			}
			if line == 0 {
				t.Fatalf("test bug: %q not in the config", tc.marker)
			}
			loc := fmt.Sprintf("%s:%d", filepath.Base(env.config), line)
			for _, cmd := range []string{"check", "sync"} {
				res := runCLI(t, cliOpts{}, cmd, "--config", env.config)
				if res.code != exitUsage {
					t.Fatalf("kvsync %s: want exit %d for %s\n%s", cmd, exitUsage, tc.name, res)
				}
				if !strings.Contains(res.stderr, tc.field) || !strings.Contains(res.stderr, loc) {
					t.Fatalf("kvsync %s: the error does not name %s at %s:\n%s", cmd, tc.field, loc, res.stderr)
				}
			}
			if n := env.writes(); n != 0 {
				t.Fatalf("a rejected config still made %d writes", n)
			}
		})
	}
}

// hostileServer stands between kvsync and the emulator: it answers PUTs of
// one key (single or bulk) with a broken reply and passes the rest through.
type hostileServer struct {
	em      *emulator.Emulator
	reply   func(w http.ResponseWriter, r *http.Request)
	broken  atomic.Int64 // broken replies sent
	started chan struct{}
	once    atomic.Bool
}

func (h *hostileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut {
		io.Copy(io.Discard, r.Body)
		h.broken.Add(1)
		if h.once.CompareAndSwap(false, true) {
			close(h.started)
		}
		h.reply(w, r)
		return
	}
	h.em.ServeHTTP(w, r)
}

// TestHostileAPIReplies: replies that are not JSON, cut off, a 200 that says
// success:false, a 5xx page, a 429 with an absurd Retry-After. kvsync must
// report the key and what was wrong, exit 1, not hang, and not record a write
// it never saw confirmed: the next sync against a sane API writes the key.
func TestHostileAPIReplies(t *testing.T) {
	cases := []struct {
		name    string
		retries int
		reply   func(w http.ResponseWriter, r *http.Request)
		want    []string // in stderr
	}{
		{name: "not JSON", reply: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>502 Bad Gateway (but sent as 200)</body></html>")
		}, want: []string{"not a JSON envelope", "HTTP 200"}},
		{name: "truncated body", retries: 1, reply: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "200")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, `{"success":tr`)
			w.(http.Flusher).Flush()
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		}, want: []string{"giving up after 2 attempts"}},
		{name: "200 with success false", reply: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"success":false,"errors":[{"code":10001,"message":"upstream said no"}],"messages":[],"result":null}`)
		}, want: []string{"code 10001", "upstream said no"}},
		{name: "5xx HTML page", retries: 1, reply: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>bad gateway</html>")
		}, want: []string{"HTTP 502", "giving up after 2 attempts"}},
		{name: "429 with an enormous Retry-After", reply: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "99999999999999")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}`)
		}, want: []string{"HTTP 429", "code 971"}},
	}
	for _, tc := range cases {
		for _, bulk := range []bool{false, true} {
			mode := map[bool]string{false: "single PUT", true: "bulk"}[bulk]
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				em, err := emulator.New(emulator.Options{Token: testToken})
				if err != nil {
					t.Fatal(err)
				}
				h := &hostileServer{em: em, reply: tc.reply, started: make(chan struct{})}
				srv := httptest.NewServer(h)
				env := newKVEnvFrom(t, em)
				t.Cleanup(srv.Close)
				mustWrite(t, filepath.Join(env.root, "page.html"), "<h1>page</h1>")
				extra := "bulk_threshold: 0"
				if bulk {
					extra = ""
				}
				env.writeConfig(fmt.Sprintf("max_retries: %d", tc.retries), extra)
				sane := env.config
				hostile := filepath.Join(filepath.Dir(env.config), "hostile.yaml")
				b, _ := os.ReadFile(sane)
				os.WriteFile(hostile, []byte(strings.Replace(string(b), env.srv.URL, srv.URL, 1)), 0o600)

				res := runCLI(t, cliOpts{timeout: 60 * time.Second}, "sync", "--config", hostile)
				if res.code != exitSyncFailed {
					t.Fatalf("want exit %d\n%s", exitSyncFailed, res)
				}
				if h.broken.Load() == 0 {
					t.Fatal("test bug: the hostile server never answered a PUT")
				}
				wantKey := `"page.html"`
				if bulk {
					wantKey = "page.html"
				}
				for _, w := range append([]string{wantKey}, tc.want...) {
					if !strings.Contains(res.stdout+res.stderr, w) {
						t.Errorf("the output does not say %q:\n%s", w, res)
					}
				}
				if strings.Contains(res.stderr, "retry after 1h") && res.took > 30*time.Second {
					t.Errorf("a 429 with a huge Retry-After kept sync for %s", res.took)
				}
				// Nothing was recorded as written: a sane API gets the write.
				res = runCLI(t, cliOpts{}, "sync", "--config", sane)
				if res.code != exitOK {
					t.Fatalf("sync against the emulator afterwards: want exit 0\n%s", res)
				}
				env.waitConverged(t, expectTree(t, env.root, nil), converge)
			})
		}
	}
}

// TestHostileRetryAfterDoesNotWedge: a 429 asking to wait for years is obeyed
// only up to the limiter's cap, and even that pause ends at once on SIGTERM,
// with the unwritten key named.
func TestHostileRetryAfterDoesNotWedge(t *testing.T) {
	em, err := emulator.New(emulator.Options{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileServer{em: em, started: make(chan struct{}), reply: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "99999999999999")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"success":false,"errors":[{"code":971,"message":"Please wait"}],"messages":[],"result":null}`)
	}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	env := newKVEnvFrom(t, em)
	mustWrite(t, filepath.Join(env.root, "page.html"), "<h1>page</h1>")
	env.writeConfig("max_retries: 5\nbase_url: "+srv.URL+"/client/v4", "bulk_threshold: 0")
	b, _ := os.ReadFile(env.config)
	// The harness writes its own base_url first; drop it for the hostile one.
	cfg := strings.Replace(string(b), "  base_url: "+env.srv.URL+"/client/v4\n", "", 1)
	os.WriteFile(env.config, []byte(cfg), 0o600)

	cmd := execKvsync(env, "sync", "--config", env.config)
	out := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-h.started:
	case err := <-done:
		t.Fatalf("sync ended before any request: %v\n%s", err, out)
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("sync sent no PUT within 30s")
	}
	// Not a sleep: sync says it pauses for the 429 before it waits, so once
	// that line is out it is in the pause, and the SIGTERM below lands in it.
	deadline := time.Now().Add(converge)
	for !strings.Contains(out.String(), "KV API rate limit hit; pausing every request") {
		select {
		case err := <-done:
			t.Fatalf("sync ended (%v) although the 429 asked it to wait:\n%s", err, out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("sync did not report the 429 pause within %s:\n%s", converge, tail(out.String(), 20))
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		// Work was left undone: not 0, and not "could not start" (3).
		if code := exitCode(t, err); code != exitInterrupted {
			t.Fatalf("sync interrupted during a 429 pause exited %d, want %d:\n%s", code, exitInterrupted, out)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("sync did not end within 20s of SIGTERM while paused by a huge Retry-After:\n%s", tail(out.String(), 20))
	}
	// The pause ended because of the SIGTERM, not on its own.
	if s := out.String(); !strings.Contains(s, "stopped by a signal") || !strings.Contains(s, "(interrupted)") {
		t.Errorf("sync did not end because of the SIGTERM:\n%s", tail(s, 20))
	}
	if s := out.String(); !strings.Contains(s, "page.html") || !strings.Contains(s, "429") {
		t.Errorf("the output does not name the key and the 429:\n%s", tail(s, 20))
	}
	if n := h.broken.Load(); n != 1 {
		t.Errorf("%d PUTs during one capped pause, want 1", n)
	}
}
