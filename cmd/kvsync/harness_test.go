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
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/testkit"
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

	// tap, when set, sees every request before the emulator does and may
	// block it (see holdWritesAfter).
	tapMu sync.Mutex
	tap   func(r *http.Request)
	// barriers numbers the marker files of barrier.
	barriers int
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
	base := t.TempDir()
	env := &kvEnv{t: t, em: em, root: filepath.Join(base, "root"), stateDir: filepath.Join(base, "state")}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		env.tapMu.Lock()
		tap := env.tap
		env.tapMu.Unlock()
		if tap != nil {
			tap(r)
		}
		em.ServeHTTP(w, r)
	}))
	env.srv = srv
	t.Cleanup(func() { srv.Close(); em.Close() })
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
	logs    *testkit.Buffer
	metrics string // base URL of /metrics, /readyz
	exited  chan error
}

var metricsAddrRE = regexp.MustCompile(`msg="metrics serving" addr=(\S+)`)

func (e *kvEnv) startDaemon(args ...string) *kvsyncProc {
	e.t.Helper()
	cmd := exec.Command(kvsyncBin, append([]string{"run", "--config", e.config}, args...)...)
	cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken)
	d := &kvsyncProc{t: e.t, cmd: cmd, logs: &testkit.Buffer{}, exited: make(chan error, 1)}
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

// ready asks /readyz once: the initial sync is done.
func (d *kvsyncProc) ready() bool {
	resp, err := http.Get(d.metrics + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady polls /readyz until the initial sync is done: every request of
// it answered and the engine idle (supervisor.waitInitial).
func (d *kvsyncProc) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if d.ready() {
			return
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
		case compactJSON(userMetadata(g.Metadata)) != w.Metadata:
			diffs = append(diffs, fmt.Sprintf("key %q metadata %s, want %s and kvsync's record", k, g.Metadata, w.Metadata))
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

// userMetadata is metadata without kvsync's record, if it carries one:
// what the sidecar gave, or another tool wrote.
func userMetadata(m json.RawMessage) json.RawMessage {
	u, _, _ := kvrecord.Split(m)
	return u
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

// writeOps are the emulator's operations that change data.
var writeOps = []string{emulator.OpPut, emulator.OpBulkPut, emulator.OpDelete, emulator.OpBulkDelete, emulator.OpBulkDeleteDeprecated}

// writeCounts returns the emulator's request count of every write
// operation, whatever the status.
func (e *kvEnv) writeCounts() map[string]int {
	c := map[string]int{}
	for _, op := range writeOps {
		c[op] = e.em.Count(op, 0)
	}
	return c
}

// writesSince describes the write requests made since before, less the
// markers single PUTs of the barriers in between; "" when there were none.
func (e *kvEnv) writesSince(before map[string]int, markers int) string {
	var extra []string
	for op, n := range e.writeCounts() {
		d := n - before[op]
		if op == emulator.OpPut {
			d -= markers
		}
		if d != 0 {
			extra = append(extra, fmt.Sprintf("%s %+d", op, d))
		}
	}
	sort.Strings(extra)
	return strings.Join(extra, ", ")
}

// barrier returns once everything the daemon d was going to send because
// of a change made to the tree before the call has been answered by the
// emulator, so a test can then assert that a change caused no write by
// reading the counters, instead of sleeping and hoping a late write would
// have come by then. It returns the markers it added to the tree (they stay,
// as ordinary files) with their entries, and their count: each went out as
// exactly one PUT.
//
// Why it is sound: the watcher reads inotify events in order and a path
// fires no later than min(last event + quiet, first event + max_delay), so
// a change made before marker 1 fires in the same batch as marker 1 or an
// earlier one; batches reach the engine (desired.Sink) one call at a time,
// never overlapping. Marker 2 is created once marker 1 is in KV, so its
// batch is handed over only after marker 1's batch, and with it every
// earlier change, was queued in the engine. Once marker 2 is in KV, a
// queue depth of 0 followed (in a later scrape) by 0 requests in flight
// means that every request for those changes has been answered: a key is
// counted in the queue gauge from the moment it is queued until its request
// starts, and in the in-flight gauge until the reply has been handled. The
// emulator counts a request before its reply leaves (the reply is buffered
// until the handler returns), so the counters then hold it.
//
// Each marker is renamed into the tree, one event, so it is one state and
// one PUT: below the engine's bulk minimum, a lone small change is
// streamed. A change that wrongly rode in one bulk request with a marker
// would show as a bulk_put in writesSince.
func (e *kvEnv) barrier(t testing.TB, d *kvsyncProc) (markers map[string]kvEntry, n int) {
	t.Helper()
	markers = map[string]kvEntry{}
	staging := filepath.Join(filepath.Dir(e.root), "barrier-staging")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		e.barriers++
		key := fmt.Sprintf("zz-barrier-%03d.txt", e.barriers)
		val := fmt.Sprintf("barrier %d", e.barriers)
		mustWrite(t, filepath.Join(staging, key), val)
		if err := os.Rename(filepath.Join(staging, key), filepath.Join(e.root, key)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(converge)
		for string(e.em.Snapshot(testAccount, testNamespace)[key].Value) != val {
			if time.Now().After(deadline) {
				t.Fatalf("barrier: marker %s did not reach KV within %s", key, converge)
			}
			time.Sleep(10 * time.Millisecond)
		}
		markers[key] = kvEntry{Value: val}
	}
	deadline := time.Now().Add(converge)
	for _, g := range []string{"kvsync_queue_depth", "kvsync_inflight_uploads"} {
		for d.gauge(g) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("barrier: %s still not 0 after %s", g, converge)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return markers, len(markers)
}

// gauge reads a gauge from a scrape of d's /metrics: the sum of its series,
// which for a per-sync gauge adds up every sync.
func (d *kvsyncProc) gauge(name string) float64 {
	d.t.Helper()
	var sum float64
	found := false
	for _, line := range strings.Split(d.scrape(), "\n") {
		v, ok := strings.CutPrefix(line, name+" ")
		if !ok && strings.HasPrefix(line, name+"{") {
			_, v, ok = strings.Cut(line, "} ")
		}
		if !ok {
			continue
		}
		var f float64
		if _, err := fmt.Sscan(v, &f); err != nil {
			d.t.Fatalf("metric %s: %q: %v", name, line, err)
		}
		sum += f
		found = true
	}
	if !found {
		d.t.Fatalf("metric %s not in the scrape", name)
	}
	return sum
}

// with returns want plus extra.
func with(want, extra map[string]kvEntry) map[string]kvEntry {
	out := make(map[string]kvEntry, len(want)+len(extra))
	for k, v := range want {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// holdWritesAfter lets the emulator answer the first n write requests (PUT
// or DELETE of a value, or a bulk request) and holds every later one before
// the emulator sees it, until release is called (at the latest when the
// test ends, so the server can close). held is closed when the first
// request is held: from then on, no write beyond the n-th can take effect.
func (e *kvEnv) holdWritesAfter(t testing.TB, n int) (held <-chan struct{}, release func()) {
	var (
		mu     sync.Mutex
		seen   int
		gate   = make(chan struct{})
		heldCh = make(chan struct{})
		once   sync.Once
	)
	release = sync.OnceFunc(func() { close(gate) })
	e.tapMu.Lock()
	e.tap = func(r *http.Request) {
		if !strings.Contains(r.URL.Path, "/storage/kv/namespaces/") || r.Method == http.MethodGet {
			return
		}
		mu.Lock()
		seen++
		hold := seen > n
		mu.Unlock()
		if hold {
			once.Do(func() { close(heldCh) })
			<-gate
		}
	}
	e.tapMu.Unlock()
	// Registered after the server's cleanup, so it runs first: Close waits
	// for the held handlers.
	t.Cleanup(release)
	return heldCh, release
}

// waitLog waits until d has logged text, or fails after within.
func waitLog(t testing.TB, d *kvsyncProc, text string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(d.logs.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("kvsync did not log %q within %s:\n%s", text, within, tail(d.logs.String(), 20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
