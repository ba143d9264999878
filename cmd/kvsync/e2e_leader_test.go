package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	rbacv1client "k8s.io/client-go/kubernetes/typed/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/kubetest"
)

// The election's durations in these tests: short, to keep them fast, with
// margins for -race on two busy cores. renew + retry (2.5 s) is well
// under the lease (4 s): a leader stops writing 1.5 s before its Lease
// could expire for anyone else.
const (
	testLease = 4 * time.Second
	testRenew = 2 * time.Second
	testRetry = 500 * time.Millisecond
	// leaderSync is the sync's name in the configs, and its metric label.
	leaderSync = "e2e"
)

// leaderEnv is one emulator, one API server and several kvsync processes
// standing for one Lease, each with its own state directory (its own pod).
type leaderEnv struct {
	*kvEnv
	kube  *kubetest.Server
	lease string
	// api, when set, is added to the api section of the configs.
	api string
	// leaseFor, renew and retry are the election's durations: the short
	// test ones unless a test that measures no handover widens them.
	leaseFor, renew, retry time.Duration
}

func newLeaderEnv(t *testing.T, o kubetest.Options) *leaderEnv {
	t.Helper()
	kube := kubetest.Start(t, o)
	env := &leaderEnv{kvEnv: newKVEnv(t, emulator.Faults{}), kube: kube, lease: "kvsync-site",
		leaseFor: testLease, renew: testRenew, retry: testRetry}
	t.Setenv("KUBECONFIG", kube.AdminKubeconfig)
	return env
}

// start runs `kvsync run` as candidate id, publishing root.
func (e *leaderEnv) start(id, root string) *kvsyncProc {
	e.t.Helper()
	base := filepath.Dir(e.root)
	cfg := fmt.Sprintf(`state_dir: %s
metrics_listen: 127.0.0.1:0
log_level: debug
api:
  base_url: %s/client/v4
  account_id: %s
%s
leader_election:
  enabled: true
  namespace: default
  identity: %s
  lease_duration: %s
  renew_deadline: %s
  retry_period: %s
syncs:
  - name: %s
    dir: %s
    namespace_id: %s
    quiet: 100ms
    max_delay: 1s
    lease_name: %s
`, filepath.Join(base, "state-"+id), e.srv.URL, testAccount, indent(e.api, "  "), id, e.leaseFor, e.renew, e.retry, leaderSync, root, testNamespace, e.lease)
	e.config = filepath.Join(base, id+".yaml")
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return e.startDaemon()
}

// leading reads kvsync_leader for the sync; false if d is gone.
func (d *kvsyncProc) leading() bool {
	resp, err := http.Get(d.metrics + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `kvsync_leader{sync="`+leaderSync+`"} 1`)
}

// writeRequests sums d's write requests to KV, whatever their status.
func (d *kvsyncProc) writeRequests() int {
	d.t.Helper()
	n := 0
	for _, line := range strings.Split(d.scrape(), "\n") {
		if !strings.HasPrefix(line, "kvsync_api_requests_total{") {
			continue
		}
		for _, op := range []string{"put", "bulk_put", "delete", "bulk_delete"} {
			if strings.Contains(line, `op="`+op+`"`) {
				var v float64
				fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
				n += int(v)
			}
		}
	}
	return n
}

// waitLeader waits until exactly one of ds leads and returns it.
func waitLeader(t *testing.T, within time.Duration, ds ...*kvsyncProc) *kvsyncProc {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var leaders []*kvsyncProc
		for _, d := range ds {
			if d.leading() {
				leaders = append(leaders, d)
			}
		}
		switch len(leaders) {
		case 1:
			return leaders[0]
		case 0:
		default:
			t.Fatalf("%d processes lead at once", len(leaders))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no process led within %s", within)
	return nil
}

func makeTree(t *testing.T, root, content string, n int) {
	t.Helper()
	for i := range n {
		mustWrite(t, filepath.Join(root, fmt.Sprintf("page-%03d.html", i)), fmt.Sprintf("%s page %d", content, i))
	}
}

func (e *kvEnv) keysWritten() int {
	return e.em.KeyCount(emulator.OpPut) + e.em.KeyCount(emulator.OpBulkPut)
}

// TestLeaderThreeProcessesOneWriter: three processes publish one tree
// through one Lease: one writes, the others write nothing, and the
// emulator's write requests are exactly the leader's, at the first sync
// and for later changes. All three are ready.
func TestLeaderThreeProcessesOneWriter(t *testing.T) {
	env := newLeaderEnv(t, kubetest.Options{})
	// kvsync's default durations: this test measures no handover, and a
	// leader starved of CPU for 2 s (the race detector on two busy cores)
	// would lose the short test lease and fail it for no fault of kvsync's.
	env.leaseFor, env.renew, env.retry = 15*time.Second, 10*time.Second, 2*time.Second
	makeTree(t, env.root, "v1", 40)
	ds := []*kvsyncProc{env.start("a", env.root), env.start("b", env.root), env.start("c", env.root)}
	lead := waitLeader(t, 60*time.Second, ds...)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	for _, d := range ds {
		d.waitReady(converge)
	}
	mustWrite(t, filepath.Join(env.root, "page-001.html"), "v2 page 1")
	mustWrite(t, filepath.Join(env.root, "new.html"), "new")
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	// Several retry periods more: a standby that wrote would show by now.
	time.Sleep(4 * env.retry)
	if again := waitLeader(t, time.Second, ds...); again != lead {
		t.Fatal("leadership moved with nothing failing")
	}
	emulated := 0
	for _, n := range env.writeCounts() {
		emulated += n
	}
	var per []string
	for i, d := range ds {
		n := d.writeRequests()
		per = append(per, fmt.Sprintf("%c=%d", 'a'+i, n))
		if d == lead && n != emulated {
			t.Errorf("the leader made %d write requests, the emulator saw %d", n, emulated)
		}
		if d != lead && n != 0 {
			t.Errorf("a standby made %d write requests", n)
		}
	}
	t.Logf("write requests: emulator %d; per process %s (%d keys written)", emulated, strings.Join(per, " "), env.keysWritten())
}

// TestLeaderKill9Takeover: after kill -9 of the leader a standby takes
// over within the lease duration plus a margin, lists the namespace and
// writes only what changed meanwhile: no unchanged key is rewritten.
func TestLeaderKill9Takeover(t *testing.T) {
	env := newLeaderEnv(t, kubetest.Options{})
	makeTree(t, env.root, "v1", 40)
	ds := []*kvsyncProc{env.start("a", env.root), env.start("b", env.root), env.start("c", env.root)}
	lead := waitLeader(t, 60*time.Second, ds...)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	before := env.keysWritten()

	killed := time.Now()
	lead.kill9()
	// Changed while nobody leads: the new leader's full sync finds them.
	mustWrite(t, filepath.Join(env.root, "page-007.html"), "v2 page 7")
	mustWrite(t, filepath.Join(env.root, "added.html"), "added")
	var rest []*kvsyncProc
	for _, d := range ds {
		if d != lead {
			rest = append(rest, d)
		}
	}
	next := waitLeader(t, testLease+15*time.Second, rest...)
	took := time.Since(killed)
	t.Logf("takeover after kill -9: %v (lease %v, renew %v, retry %v)", took.Round(time.Millisecond), testLease, testRenew, testRetry)
	if took > testLease+10*time.Second {
		t.Errorf("takeover took %v, over lease duration %v plus 10 s", took, testLease)
	}
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	if n := env.keysWritten() - before; n != 2 {
		t.Errorf("after the takeover %d keys were written, want 2 (the changed and the added file): unchanged keys were rewritten", n)
	}
	if !strings.Contains(next.logs.String(), "leading: listed the namespace") {
		t.Error("the new leader did not list the namespace")
	}
}

// TestLeaderStopsWritingWhenAPIServerGoes: with the API server gone,
// the leader keeps seeing changes but its term ends at the renew deadline,
// and no write reaches KV after that, let alone after its Lease could
// have expired for another process. It leads again once the API server
// is back, and catches up.
func TestLeaderStopsWritingWhenAPIServerGoes(t *testing.T) {
	env := newLeaderEnv(t, kubetest.Options{})
	makeTree(t, env.root, "v1", 20)
	d := env.start("a", env.root)
	waitLeader(t, 60*time.Second, d)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)

	var mu sync.Mutex
	var lastWrite time.Time
	env.tapMu.Lock()
	env.tap = func(r *http.Request) {
		if strings.Contains(r.URL.Path, "/storage/kv/namespaces/") && r.Method != http.MethodGet {
			mu.Lock()
			lastWrite = time.Now()
			mu.Unlock()
		}
	}
	env.tapMu.Unlock()

	// The last renewal, as the API server recorded it.
	c, err := coordinationv1client.NewForConfig(env.kube.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := c.Leases("default").Get(ctx, env.lease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Killed, not stopped gracefully: a graceful stop answers renewals
	// for a while, and the renewal read would not be the last one.
	env.kube.KillAPIServer()
	stopped := time.Now()
	renewed := l.Spec.RenewTime.Time
	// A later renewal than the one read may have happened before the
	// kill; it only moves the expiry below later, so the test is stricter.
	if stopped.Sub(renewed) > testRetry+time.Second {
		t.Fatalf("lease last renewed %v before the stop", stopped.Sub(renewed))
	}
	// Changes keep coming, before and after the term ends.
	for i := 0; time.Since(stopped) < testLease+2*time.Second; i++ {
		mustWrite(t, filepath.Join(env.root, fmt.Sprintf("page-%03d.html", i%20)), fmt.Sprintf("v2.%d", i))
		time.Sleep(150 * time.Millisecond)
	}
	waitLog(t, d, "stopped leading", time.Second)
	if d.leading() {
		t.Fatal("still leading with the API server stopped")
	}
	if !d.ready() {
		t.Error("a standby is not ready")
	}
	mu.Lock()
	last := lastWrite
	mu.Unlock()
	// The earliest the Lease could expire for another process: a lease
	// duration after the renewal read above (a later one only moves it on).
	expiry := renewed.Add(testLease)
	t.Logf("API server stopped %v after the last renewal read; last write reached KV %v after the stop; the lease could expire %v after the stop",
		stopped.Sub(renewed).Round(time.Millisecond), last.Sub(stopped).Round(time.Millisecond), expiry.Sub(stopped).Round(time.Millisecond))
	if !last.Before(expiry) {
		t.Errorf("a write reached KV %v after the lease could have expired", last.Sub(expiry))
	}
	if limit := renewed.Add(testRetry + testRenew + time.Second); last.After(limit) {
		t.Errorf("a write reached KV %v after the renew deadline (+1 s)", last.Sub(limit.Add(-time.Second)))
	}

	env.kube.StartAPIServer()
	waitLeader(t, 30*time.Second, d)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
}

// TestLeaderCancelsWaitingWrites: a write waiting in the rate limiter
// when the term ends is cancelled, not sent when its token comes.
func TestLeaderCancelsWaitingWrites(t *testing.T) {
	env := newLeaderEnv(t, kubetest.Options{})
	// Two tokens: the term's listing and the first sync's bulk write.
	// The next request waits 50 s for a token.
	env.api = "rate: 0.02\nburst: 2"
	makeTree(t, env.root, "v1", 5)
	d := env.start("a", env.root)
	waitLeader(t, 60*time.Second, d)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	writes := env.writeCounts()

	mustWrite(t, filepath.Join(env.root, "page-001.html"), "v2")
	deadline := time.Now().Add(converge)
	for d.gauge("kvsync_inflight_uploads") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the change's write did not start waiting for a token")
		}
		time.Sleep(50 * time.Millisecond)
	}
	env.kube.KillAPIServer()
	killed := time.Now()
	waitLog(t, d, "stopped leading", testLease+5*time.Second)
	for d.gauge("kvsync_inflight_uploads") != 0 {
		if time.Since(killed) > testLease+10*time.Second {
			t.Fatal("the waiting write was not cancelled when the term ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the write waiting for a token ended %v after the API server was killed", time.Since(killed).Round(time.Millisecond))
	if got := env.writesSince(writes, 0); got != "" {
		t.Errorf("writes reached KV after the term ended: %s", got)
	}
}

// TestLeaderRollingUpdate: old pods publish the old tree; new pods with a
// new tree start beside them, then the old ones get SIGTERM one by one.
// Each releases the Lease at once (a standby takes over in about a
// second); whichever pod leads, the last leader is a new one, whose full
// sync compares digests with the namespace: the new content wins, stale
// keys of the old tree are deleted, and it stays so.
func TestLeaderRollingUpdate(t *testing.T) {
	env := newLeaderEnv(t, kubetest.Options{})
	oldRoot, newRoot := env.root, filepath.Join(filepath.Dir(env.root), "new-root")
	makeTree(t, oldRoot, "old", 20)
	mustWrite(t, filepath.Join(oldRoot, "only-old.html"), "gone in the new version")
	makeTree(t, newRoot, "new", 20)
	mustWrite(t, filepath.Join(newRoot, "only-new.html"), "added in the new version")

	oldA, oldB := env.start("old-a", oldRoot), env.start("old-b", oldRoot)
	waitLeader(t, 60*time.Second, oldA, oldB)
	env.waitConverged(t, expectTree(t, oldRoot, nil), converge)

	newA, newB := env.start("new-a", newRoot), env.start("new-b", newRoot)
	newA.waitReady(converge)
	newB.waitReady(converge)
	for _, old := range []*kvsyncProc{oldA, oldB} {
		stopped := time.Now()
		old.stop()
		rest := []*kvsyncProc{newA, newB}
		if old == oldA {
			rest = append(rest, oldB)
		}
		next := waitLeader(t, 30*time.Second, rest...)
		t.Logf("after SIGTERM of a pod, %s leads within %v", map[*kvsyncProc]string{newA: "new-a", newB: "new-b", oldB: "old-b"}[next], time.Since(stopped).Round(time.Millisecond))
	}
	want := expectTree(t, newRoot, nil)
	env.waitConverged(t, want, converge)
	// And it stays: nothing old comes back.
	time.Sleep(2 * testLease)
	if diffs := diffKV(env.em, want); len(diffs) > 0 {
		t.Fatalf("the new tree did not stay:\n%s", strings.Join(diffs, "\n"))
	}
}

// TestLeaderRBAC: under RBAC, the example's Role is all kvsync needs;
// without its RoleBinding kvsync fails with an error naming the Lease,
// the namespace and the verb, and does not retry silently.
func TestLeaderRBAC(t *testing.T) {
	env := newLeaderEnv(t, kubetest.Options{RBAC: true})
	t.Setenv("KUBECONFIG", env.kube.ServiceAccountKubeconfig)
	makeTree(t, env.root, "v1", 10)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sa, role, binding := readRBAC(t)
	cfg := env.kube.AdminConfig()
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rbac, err := rbacv1client.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := core.ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.Roles("default").Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	d := env.start("a", env.root)
	select {
	case err := <-d.exited:
		if err == nil {
			t.Fatal("kvsync exited 0 without permission on the Lease")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("kvsync kept running without permission on the Lease")
	}
	d.exited <- nil // for the cleanup
	want := `refuses to get Lease "kvsync-site" in namespace "default"`
	if !strings.Contains(d.logs.String(), want) {
		t.Fatalf("the error does not say %q:\n%s", want, tail(d.logs.String(), 20))
	}
	if n := env.keysWritten(); n != 0 {
		t.Errorf("%d keys written without the Lease", n)
	}

	if _, err := rbac.RoleBindings("default").Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d = env.start("a", env.root)
	waitLeader(t, 60*time.Second, d)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	// Renewals (get, update) keep working for several retry periods.
	time.Sleep(4 * testRetry)
	if !d.leading() {
		t.Fatal("lost the Lease under the Role")
	}
}

// readRBAC reads the Kubernetes example's ServiceAccount, Role and
// RoleBinding, the very file users apply.
func readRBAC(t *testing.T) (*corev1.ServiceAccount, *rbacv1.Role, *rbacv1.RoleBinding) {
	t.Helper()
	path := filepath.Join("..", "..", "deploy", "kubernetes", "rbac.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		sa      *corev1.ServiceAccount
		role    *rbacv1.Role
		binding *rbacv1.RoleBinding
	)
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var into any
		switch tm.Kind {
		case "ServiceAccount":
			sa = &corev1.ServiceAccount{}
			into = sa
		case "Role":
			role = &rbacv1.Role{}
			into = role
		case "RoleBinding":
			binding = &rbacv1.RoleBinding{}
			into = binding
		default:
			t.Fatalf("%s: unexpected kind %q", path, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatalf("%s: %s: %v", path, tm.Kind, err)
		}
	}
	if sa == nil || role == nil || binding == nil {
		t.Fatalf("%s: want a ServiceAccount, a Role and a RoleBinding", path)
	}
	if sa.Name != "kvsync" || role.Name != "kvsync-leader" || binding.Name != "kvsync-leader" {
		t.Fatalf("%s: names %q, %q, %q; the test's token is system:serviceaccount:default:kvsync", path, sa.Name, role.Name, binding.Name)
	}
	return sa, role, binding
}

// TestLeaderOffNeedsNoKubernetes: without leader_election, kvsync neither
// looks for an API server (a broken $KUBECONFIG does not matter) nor
// exports the election's metrics.
func TestLeaderOffNeedsNoKubernetes(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "missing"))
	makeTree(t, env.root, "v1", 3)
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	if strings.Contains(d.scrape(), "kvsync_leader") {
		t.Error("election metrics exported with leader_election off")
	}
}
