package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// The end-to-end tests run the real binary, built once per test run, against
// an in-process emulator on loopback.

var kvsyncBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvsync-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kvsyncBin = filepath.Join(dir, "kvsync")
	args := []string{"build", "-o", kvsyncBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kvsync:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	testAccount   = "acct"
	testNamespace = "ns"
	testToken     = "e2e-token"
)

// kvEnv is an emulator plus the paths one kvsync process needs.
type kvEnv struct {
	t        testing.TB
	em       *emulator.Emulator
	srv      *httptest.Server
	root     string
	stateDir string
	config   string
}

func newKVEnv(t testing.TB, faults emulator.Faults) *kvEnv {
	t.Helper()
	em, err := emulator.New(emulator.Options{Token: testToken, Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	return newKVEnvFrom(t, em)
}

// newKVEnvFrom serves em on loopback for one test.
func newKVEnvFrom(t testing.TB, em *emulator.Emulator) *kvEnv {
	t.Helper()
	srv := httptest.NewServer(em)
	t.Cleanup(func() { srv.Close(); em.Close() })
	base := t.TempDir()
	env := &kvEnv{t: t, em: em, srv: srv, root: filepath.Join(base, "root"), stateDir: filepath.Join(base, "state")}
	if err := os.MkdirAll(env.root, 0o755); err != nil {
		t.Fatal(err)
	}
	return env
}

// writeConfig writes a config for one sync of env.root; extra is appended to
// the sync's fields, api to the api section.
func (e *kvEnv) writeConfig(api, extra string) {
	e.t.Helper()
	cfg := fmt.Sprintf(`state_dir: %s
metrics_listen: 127.0.0.1:0
log_level: debug
api:
  base_url: %s/client/v4
  account_id: %s
%s
syncs:
  - name: e2e
    dir: %s
    namespace_id: %s
    quiet: 100ms
    max_delay: 1s
%s
`, e.stateDir, e.srv.URL, testAccount, indent(api, "  "), e.root, testNamespace, indent(extra, "    "))
	e.config = filepath.Join(filepath.Dir(e.root), "kvsync.yaml")
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func indent(s, pre string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = pre + l
	}
	return strings.Join(lines, "\n")
}

// daemon is one running `kvsync run` process.
type kvsyncProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	logs    *syncBuffer
	metrics string // base URL of /metrics, /readyz
	exited  chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var metricsAddrRE = regexp.MustCompile(`msg="metrics serving" addr=(\S+)`)

func (e *kvEnv) startDaemon(args ...string) *kvsyncProc {
	e.t.Helper()
	cmd := exec.Command(kvsyncBin, append([]string{"run", "--config", e.config}, args...)...)
	cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken)
	d := &kvsyncProc{t: e.t, cmd: cmd, logs: &syncBuffer{}, exited: make(chan error, 1)}
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(d.logs, pw)
	cmd.Stdout = d.logs
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := metricsAddrRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	go func() { d.exited <- cmd.Wait(); pw.Close() }()
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-d.exited
		}
		if e.t.Failed() {
			e.t.Logf("kvsync logs:\n%s", tail(d.logs.String(), 80))
		}
	})
	select {
	case a := <-addr:
		d.metrics = "http://" + a
	case err := <-d.exited:
		e.t.Fatalf("kvsync run exited early: %v\n%s", err, d.logs.String())
	case <-time.After(30 * time.Second):
		e.t.Fatalf("kvsync run did not start serving metrics\n%s", d.logs.String())
	}
	return d
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitReady polls /readyz: the initial sync is done.
func (d *kvsyncProc) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(d.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("kvsync not ready after %s", timeout)
}

// stop sends SIGTERM and waits for a clean exit.
func (d *kvsyncProc) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.exited:
		if err != nil {
			d.t.Fatalf("kvsync run exited with %v after SIGTERM\n%s", err, tail(d.logs.String(), 40))
		}
	case <-time.After(60 * time.Second):
		d.t.Fatal("kvsync run did not stop within 60s of SIGTERM")
	}
}

func (d *kvsyncProc) kill9() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

func (d *kvsyncProc) scrape() string {
	d.t.Helper()
	resp, err := http.Get(d.metrics + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// kvEntry is what a key should hold, as compared with the emulator.
type kvEntry struct {
	Value    string
	Metadata string // compacted JSON, "" for none
	TTL      time.Duration
}

// expectTree derives the keys the tree should produce: every regular file
// (links followed inside the tree) except sidecars; a sidecar's compacted
// JSON is its file's metadata. held lists keys whose local input is invalid:
// their expected state is given by the caller.
func expectTree(t testing.TB, root string, ttlFor func(key string) time.Duration) map[string]kvEntry {
	t.Helper()
	want := map[string]kvEntry{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if fi.IsDir() || strings.HasSuffix(p, ".meta.json") {
			return nil
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() {
				return nil
			}
		} else if !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		ent := kvEntry{Value: string(b)}
		if meta, err := os.ReadFile(p + ".meta.json"); err == nil {
			var buf bytes.Buffer
			if err := json.Compact(&buf, meta); err != nil {
				t.Fatalf("test bug: sidecar %s is not JSON", p)
			}
			ent.Metadata = buf.String()
		}
		key := filepath.ToSlash(rel)
		if ttlFor != nil {
			ent.TTL = ttlFor(key)
		}
		want[key] = ent
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// diffKV compares the emulator's namespace with want; TTL keys must expire
// within a minute of now+TTL.
func diffKV(em *emulator.Emulator, want map[string]kvEntry) []string {
	got := em.Snapshot(testAccount, testNamespace)
	var diffs []string
	now := time.Now()
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing key %q", k))
		case string(g.Value) != w.Value:
			diffs = append(diffs, fmt.Sprintf("key %q holds %q, want %q", k, abbrev(string(g.Value)), abbrev(w.Value)))
		case compactJSON(g.Metadata) != w.Metadata:
			diffs = append(diffs, fmt.Sprintf("key %q metadata %s, want %s", k, g.Metadata, w.Metadata))
		case w.TTL == 0 && g.Expiration != 0:
			diffs = append(diffs, fmt.Sprintf("key %q expires at %d, want never", k, g.Expiration))
		case w.TTL != 0 && (g.Expiration == 0 || absDur(time.Unix(g.Expiration, 0).Sub(now.Add(w.TTL))) > time.Minute):
			diffs = append(diffs, fmt.Sprintf("key %q expires at %d, want about now+%s", k, g.Expiration, w.TTL))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("unexpected key %q", k))
		}
	}
	sort.Strings(diffs)
	return diffs
}

func compactJSON(m json.RawMessage) string {
	if len(m) == 0 || string(m) == "null" {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, m); err != nil {
		return string(m)
	}
	return buf.String()
}

func abbrev(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%s...(%d bytes)", s[:40], len(s))
	}
	return s
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// waitConverged polls until the emulator holds exactly want, or fails after
// within. The deadline is the debounce window plus a generous margin for a
// shared, loaded machine; the assertion is convergence, not speed.
func (e *kvEnv) waitConverged(t testing.TB, want map[string]kvEntry, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var diffs []string
	for {
		diffs = diffKV(e.em, want)
		if len(diffs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("... and %d more", len(diffs)-10))
	}
	t.Fatalf("emulator does not hold the tree after %s:\n  %s", within, strings.Join(diffs, "\n  "))
}

func (e *kvEnv) writes() int {
	return e.em.Count("put", 0) + e.em.Count("bulk_put", 0)
}

func mustWrite(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
