package uploader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

func TestNewValidatesOptions(t *testing.T) {
	kv, st := newFakeKV(t), newMemStore()
	base := func() Options { return Options{KV: kv, Store: st, Scope: testScope, Namespace: testNS} }
	cases := []struct {
		name  string
		mod   func(*Options)
		field string
	}{
		{"no KV", func(o *Options) { o.KV = nil }, "KV"},
		{"no store", func(o *Options) { o.Store = nil }, "Store"},
		{"no scope", func(o *Options) { o.Scope = "" }, "Scope"},
		{"no namespace", func(o *Options) { o.Namespace = "" }, "Namespace"},
		{"unknown policy", func(o *Options) { o.Delete = "purge" }, "Delete"},
		{"expire without TTL", func(o *Options) { o.Delete = DeleteExpire; o.DeleteTTL = 59 * time.Second }, "DeleteTTL"},
		{"max deletes below -1", func(o *Options) { o.MaxDeletes = -2 }, "MaxDeletes"},
		{"bulk bytes over the API's body limit", func(o *Options) { o.BulkMaxBytes = kvapi.MaxBulkRequestBytes + 1 }, "BulkMaxBytes"},
		{"bulk bytes below one pair", func(o *Options) { o.BulkThreshold = 1 << 20; o.BulkMaxBytes = 1 << 20 }, "BulkMaxBytes"},
		{"too many pairs", func(o *Options) { o.BulkMaxPairs = 10001 }, "BulkMaxPairs"},
		{"threshold above value limit", func(o *Options) { o.BulkThreshold = kvapi.MaxValueBytes + 1 }, "BulkThreshold"},
		{"valid", func(o *Options) { o.Delete = DeleteExpire; o.DeleteTTL = time.Minute }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mod(&o)
			_, err := New(o)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			var oe *OptionsError
			if !errors.As(err, &oe) || oe.Field != tc.field {
				t.Fatalf("New: got %v, want an OptionsError on %s", err, tc.field)
			}
		})
	}
}

// Rule 1: a key whose desired state equals its record is not written, so a
// restart on an unchanged tree makes zero write requests.
func TestUnchangedKeysAreNotWritten(t *testing.T) {
	at := time.Now().Add(time.Hour).Truncate(time.Second)
	cases := []struct {
		name   string
		change func(desired.State) desired.State
		writes int
	}{
		{"identical", func(s desired.State) desired.State { return s }, 0},
		{"metadata equal after compaction", func(s desired.State) desired.State {
			s.Metadata = json.RawMessage(`{ "a" : 1 }`)
			return s
		}, 0},
		{"metadata changed", func(s desired.State) desired.State { s.Metadata = json.RawMessage(`{"a":2}`); return s }, 1},
		{"content changed", func(s desired.State) desired.State { s.Hash = strings.Repeat("0", 64); return s }, 1},
		{"ttl changed", func(s desired.State) desired.State { s.Expiration = desired.Expiration{TTL: 2 * time.Hour}; return s }, 1},
		{"absolute expiration changed", func(s desired.State) desired.State {
			s.Expiration = desired.Expiration{At: at.Add(time.Hour)}
			return s
		}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			st := tr.write("a.txt", "alpha")
			st.Metadata = json.RawMessage(`{"a":1}`)
			other := tr.write("b.txt", "beta")
			other.Expiration = desired.Expiration{At: at}
			third := tr.write("c.txt", "gamma")
			third.Expiration = desired.Expiration{TTL: time.Hour}
			store := newMemStore()
			kv := newFakeKV(t)
			e, _ := newTestEngine(t, kv, store, nil)
			if _, err := e.SyncOnce(context.Background(), complete(st, other, third)); err != nil {
				t.Fatal(err)
			}
			// Restart: a new engine and KV counter on the same store.
			kv2 := newFakeKV(t)
			e2, _ := newTestEngine(t, kv2, store, nil)
			changed := tc.change(st)
			rep, err := e2.SyncOnce(context.Background(), complete(changed, other, third))
			if err != nil {
				t.Fatal(err)
			}
			if got := kv2.writes(); got != tc.writes {
				t.Fatalf("write requests = %d, want %d", got, tc.writes)
			}
			if rep.Written != tc.writes || rep.Unchanged != 3-tc.writes {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

// A record whose TTL ran out no longer describes KV: the key is rewritten.
func TestExpiredRecordIsRewritten(t *testing.T) {
	tr := newTree(t)
	st := tr.write("a.txt", "alpha")
	st.Expiration = desired.Expiration{TTL: time.Hour}
	store := newMemStore()
	now := time.Now()
	clock := func() time.Time { return now }
	kv := newFakeKV(t)
	e, _ := newTestEngine(t, kv, store, func(o *Options) { o.Now = clock })
	if _, err := e.SyncOnce(context.Background(), complete(st)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if _, err := e.SyncOnce(context.Background(), complete(st)); err != nil {
		t.Fatal(err)
	}
	if got := kv.count(kvapi.OpPut); got != 2 {
		t.Fatalf("puts = %d, want 2 (the record's TTL had passed)", got)
	}
}

// Rule 1: a clean record is stored only after the API confirmed the write;
// a write that failed leaves only its intent mark (the request was sent, so
// it may have taken effect), unless the API refused it (a 4xx), which
// proves it was not applied: then the mark is taken back.
func TestRecordOnlyAfterConfirmedWrite(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		marked bool
	}{
		{"refused", apiErr(400, 10012), false},
		{"success false", apiErr(200, 10001), true},
		{"retryable", apiErr(503, 10001), true},
		{"network", &kvapi.NetworkError{Op: kvapi.OpPut, Err: errors.New("connection reset")}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			st := tr.write("a.txt", "alpha")
			store := newMemStore()
			kv := newFakeKV(t)
			kv.putErr = func(string) error { return tc.err }
			e, _ := newTestEngine(t, kv, store, func(o *Options) { o.RetryBackoff = time.Hour })
			rep, err := e.SyncOnce(context.Background(), complete(st))
			if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != 1 {
				t.Fatalf("SyncOnce = %+v, %v; want one failure", rep, err)
			}
			rec, ok := store.record(st.Key)
			if tc.marked && (!ok || !rec.Pending || rec.Hash != "") {
				t.Fatalf("record after a failed write = %+v, %v; want only an intent mark", rec, ok)
			}
			if !tc.marked && ok {
				t.Fatalf("record after a refused write = %+v; want none, as before the write", rec)
			}
			if len(rep.Failures) != 1 || rep.Failures[0].Key != st.Key || rep.Failures[0].Path != st.Path || !errors.Is(rep.Failures[0].Err, tc.err) {
				t.Fatalf("failures %+v", rep.Failures)
			}
		})
	}
}

// Rule 1: the record holds the hash of the bytes actually sent, even when the
// file changed after the watcher hashed it; single and bulk writes alike.
// The change is in place and keeps the size: the file is still the one
// the scan saw (a file of another size or inode is not sent at all, see
// TestChangedSinceScan).
func TestRecordHashesBytesSent(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			tr := newTree(t)
			stale := tr.write("a.txt", "old content!!!")
			tr.write("a.txt", "newer content!")
			states := []desired.State{stale}
			if bulk {
				states = append(states, tr.write("b.txt", "b"))
			}
			store := newMemStore()
			kv := newFakeKV(t)
			e, _ := newTestEngine(t, kv, store, nil)
			if _, err := e.SyncOnce(context.Background(), complete(states...)); err != nil {
				t.Fatal(err)
			}
			if got := kv.count(kvapi.OpBulkPut) > 0; got != bulk {
				t.Fatalf("bulk used = %v, want %v", got, bulk)
			}
			rec, _ := store.record(stale.Key)
			if want := sha256Hex([]byte("newer content!")); rec.Hash != want || rec.Size != 14 {
				t.Fatalf("record %+v, want hash %s of what was sent", rec, want)
			}
			mustContent(t, kv, stale.Key, "newer content!")
			// The watcher's next state (the new content) is then unchanged.
			e2, _ := newTestEngine(t, newFakeKV(t), store, nil)
			rep, err := e2.Plan(context.Background(), complete(append(states[1:], tr.state("a.txt"))...))
			if err != nil || len(rep.WouldWrite) != 0 {
				t.Fatalf("plan after = %+v, %v", rep, err)
			}
		})
	}
}

// Rule 1: a file that vanished before upload is skipped, not failed.
func TestVanishedFileIsSkipped(t *testing.T) {
	tr := newTree(t)
	st := tr.write("a.txt", "alpha")
	small := tr.write("b.txt", "b")
	small2 := tr.write("c.txt", "c")
	tr.remove("a.txt")
	tr.remove("b.txt")
	kv := newFakeKV(t)
	store := newMemStore()
	e, _ := newTestEngine(t, kv, store, nil)
	rep, err := e.SyncOnce(context.Background(), complete(st))
	if err != nil || rep.Failed != 0 || rep.Written != 0 || kv.writes() != 0 {
		t.Fatalf("single: %+v, %v, %d writes", rep, err, kv.writes())
	}
	rep, err = e.SyncOnce(context.Background(), complete(small, small2))
	if err != nil || rep.Failed != 0 || rep.Written != 1 {
		t.Fatalf("bulk: %+v, %v", rep, err)
	}
	if _, ok := store.record(small.Key); ok {
		t.Fatal("vanished file recorded")
	}
}

// Rule 2: one write in flight per key, and the last write wins under a storm
// of changes to a few keys.
func TestLastWriteWinsUnderStorm(t *testing.T) {
	tr := newTree(t)
	kv := newFakeKV(t)
	kv.latency = time.Millisecond
	e, _ := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.Concurrency = 8; o.BulkMinPending = 2 })
	running(t, e)
	const keys, versions = 4, 40
	// Every version is its own file, so what a write sends is fixed.
	states := make([][]desired.State, keys)
	for k := range keys {
		for v := range versions {
			st := tr.write(fmt.Sprintf("v/%d.%d", k, v), fmt.Sprintf("key %d version %d", k, v))
			st.Key = fmt.Sprintf("%sk%d", testPrefix, k)
			states[k] = append(states[k], st)
		}
	}
	var wg sync.WaitGroup
	for k := range keys {
		wg.Go(func() {
			for v := range versions {
				e.Changed([]desired.State{states[k][v]})
				// Paced so that changes also land while the key is in
				// flight; the assertions hold for any interleaving.
				time.Sleep(time.Duration(v%3) * 300 * time.Microsecond)
			}
		})
	}
	wg.Wait()
	waitIdle(t, e)
	for k := range keys {
		mustContent(t, kv, fmt.Sprintf("%sk%d", testPrefix, k), fmt.Sprintf("key %d version %d", k, versions-1))
	}
}

// Rule 2: a change that arrives during an upload causes one more upload
// after it.
func TestChangeDuringUploadIsWrittenAfter(t *testing.T) {
	tr := newTree(t)
	v1 := tr.write("a.1", "one")
	v1.Key = testPrefix + "a"
	v2 := tr.write("a.2", "two")
	v2.Key = testPrefix + "a"
	v3 := tr.write("a.3", "three")
	v3.Key = testPrefix + "a"
	kv := newFakeKV(t)
	var e *Engine
	var once sync.Once
	kv.duringPut = func(context.Context, string) {
		// While version 1 is in flight, two newer versions arrive: the
		// older of them is replaced, the newest written after.
		once.Do(func() { e.Changed([]desired.State{v2, v3}) })
	}
	store := newMemStore()
	e, _ = newTestEngine(t, kv, store, nil)
	running(t, e)
	e.Changed([]desired.State{v1})
	waitIdle(t, e)
	if got := kv.count(kvapi.OpPut); got != 2 {
		t.Fatalf("puts = %d, want 2", got)
	}
	mustContent(t, kv, v1.Key, "three")
	if rec, _ := store.record(v1.Key); rec.Hash != v3.Hash {
		t.Fatal("record is not the last write")
	}
}

// Rule 2: Changed blocks while the queue is full; the queue never grows
// beyond QueueSize.
func TestBackpressure(t *testing.T) {
	tr := newTree(t)
	gate := make(chan struct{})
	kv := newFakeKV(t)
	kv.duringPut = func(ctx context.Context, _ string) {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test").Sync("test")
	e, _ := newTestEngine(t, kv, newMemStore(), func(o *Options) {
		o.Concurrency = 1
		o.QueueSize = 2
		o.BulkThreshold = -1 // all streamed, one at a time
		o.Metrics = m
	})
	running(t, e)
	var states []desired.State
	for i := range 5 {
		states = append(states, tr.write(fmt.Sprintf("f%d", i), strings.Repeat("x", i+1)))
	}
	returned := make(chan struct{})
	go func() {
		e.Changed(states)
		close(returned)
	}()
	// One key in flight (held at the gate), two queued, the producer
	// blocked: a state nothing can change until the gate opens.
	deadline := time.After(20 * time.Second)
	for {
		e.mu.Lock()
		blocked, size, jobs := e.waiting, e.size(), e.jobs
		e.mu.Unlock()
		if size > 2 {
			t.Fatalf("queue holds %d keys, more than QueueSize", size)
		}
		if blocked == 1 && size == 2 && jobs == 1 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("Changed never blocked on a full queue (waiting %d, size %d, jobs %d)", blocked, size, jobs)
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case <-returned:
		t.Fatal("Changed returned while the queue was full")
	default:
	}
	if got := testutil.ToFloat64(m.QueueDepth); got != 2 {
		t.Fatalf("queue depth gauge %v", got)
	}
	close(gate)
	<-returned
	waitIdle(t, e)
	if got := kv.count(kvapi.OpPut); got != 5 {
		t.Fatalf("puts = %d, want 5", got)
	}
	if got := testutil.ToFloat64(m.QueueDepth); got != 0 {
		t.Fatalf("queue depth gauge %v after idle", got)
	}
}

// DryRun plans and sends nothing, records nothing.
func TestDryRunMakesNoCalls(t *testing.T) {
	tr := newTree(t)
	a := tr.write("a", "a")
	b := tr.write("b", "b")
	store := newMemStore()
	store.PutBatch(testScope, map[string]state.Record{testPrefix + "gone": {Hash: "x"}})
	kv := newFakeKV(t)
	e, _ := newTestEngine(t, kv, store, func(o *Options) { o.DryRun = true; o.Reconcile = true })
	rep, err := e.SyncOnce(context.Background(), complete(a, b))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.WouldWrite, ",") != a.Key+","+b.Key || strings.Join(rep.WouldDelete, ",") != testPrefix+"gone" {
		t.Fatalf("plan %+v", rep)
	}
	running(t, e)
	e.Snapshot(complete(a))
	e.Changed([]desired.State{a, {Key: testPrefix + "gone", Deleted: true}})
	waitIdle(t, e)
	if n := kv.total(); n != 0 {
		t.Fatalf("%d calls in a dry run", n)
	}
	if store.len() != 1 || store.puts != 1 {
		t.Fatal("store changed in a dry run")
	}
}

// Rule 5: a permanent error is not retried until the state changes or the
// next full sync; a retryable one is retried after the backoff.
func TestPermanentAndRetryableErrors(t *testing.T) {
	tr := newTree(t)
	st := tr.write("a", "a")
	t.Run("permanent", func(t *testing.T) {
		kv := newFakeKV(t)
		var mu sync.Mutex
		refuse := true
		kv.putErr = func(string) error {
			mu.Lock()
			defer mu.Unlock()
			if refuse {
				return apiErr(413, 10011)
			}
			return nil
		}
		e, logs := newTestEngine(t, kv, newMemStore(), nil)
		running(t, e)
		e.Changed([]desired.State{st})
		waitIdle(t, e)
		e.Changed([]desired.State{st}) // same state: not retried
		waitIdle(t, e)
		if got := kv.count(kvapi.OpPut); got != 1 {
			t.Fatalf("puts = %d, want 1", got)
		}
		if l := logs.String(); !strings.Contains(l, "cf_codes=[10011]") || !strings.Contains(l, st.Path) || !strings.Contains(l, st.Key) {
			t.Fatalf("log lacks key, path or code:\n%s", l)
		}
		mu.Lock()
		refuse = false
		mu.Unlock()
		changed := tr.write("a", "a2")
		e.Changed([]desired.State{changed}) // a new state is tried
		waitIdle(t, e)
		if got := kv.count(kvapi.OpPut); got != 2 {
			t.Fatalf("puts = %d, want 2", got)
		}
		mustContent(t, kv, st.Key, "a2")
	})
	t.Run("permanent retried by full sync", func(t *testing.T) {
		st := tr.state("a") // as the subtests before left it
		kv := newFakeKV(t)
		calls := 0
		kv.putErr = func(string) error {
			calls++
			if calls == 1 {
				return apiErr(400, 10012)
			}
			return nil
		}
		e, _ := newTestEngine(t, kv, newMemStore(), nil)
		running(t, e)
		e.Changed([]desired.State{st})
		waitIdle(t, e)
		e.Snapshot(complete(st))
		waitIdle(t, e)
		mustContent(t, kv, st.Key, "a2")
	})
	t.Run("retryable", func(t *testing.T) {
		st := tr.state("a") // as the subtests before left it
		kv := newFakeKV(t)
		calls := 0
		kv.putErr = func(string) error {
			calls++
			if calls <= 2 {
				return apiErr(503, 10001)
			}
			return nil
		}
		reg := prometheus.NewRegistry()
		m := metrics.New(reg, "test").Sync("test")
		store := newMemStore()
		e, _ := newTestEngine(t, kv, store, func(o *Options) { o.Metrics = m })
		running(t, e)
		e.Changed([]desired.State{st})
		waitIdle(t, e) // idle only once the backoff retries succeeded
		if got := kv.count(kvapi.OpPut); got != 3 {
			t.Fatalf("puts = %d, want 3", got)
		}
		if _, ok := store.record(st.Key); !ok {
			t.Fatal("not recorded after the retry")
		}
		if f, s := testutil.ToFloat64(m.Uploads.WithLabelValues("failed")), testutil.ToFloat64(m.Uploads.WithLabelValues("success")); f != 2 || s != 1 {
			t.Fatalf("uploads failed=%v success=%v", f, s)
		}
	})
}

// Rule 6: expiration mapping; a TTL too short is a permanent failure naming
// the key, and an absolute expiration passed or too close holds the file
// back (its key is kept, as for any file that cannot be published as it
// is); neither is sent.
func TestExpirationMapping(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name    string
		exp     desired.Expiration
		wantTTL int64
		wantAt  int64
		fail    error
	}{
		{"none", desired.Expiration{}, 0, 0, nil},
		{"ttl", desired.Expiration{TTL: 90 * time.Second}, 90, 0, nil},
		{"at", desired.Expiration{At: now.Add(time.Hour)}, 0, now.Add(time.Hour).Unix(), nil},
		{"ttl wins", desired.Expiration{TTL: time.Hour, At: now.Add(time.Minute)}, 3600, 0, nil},
		{"at too soon", desired.Expiration{At: now.Add(59 * time.Second)}, 0, 0, kvapi.ErrExpirationTooSoon},
		{"at past", desired.Expiration{At: now.Add(-time.Hour)}, 0, 0, kvapi.ErrExpirationTooSoon},
		{"ttl too short", desired.Expiration{TTL: 30 * time.Second}, 0, 0, kvapi.ErrTTLTooShort},
	}
	for _, tc := range cases {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bulk=%v", tc.name, bulk), func(t *testing.T) {
				tr := newTree(t)
				st := tr.write("a", "a")
				st.Expiration = tc.exp
				states := []desired.State{st}
				if bulk {
					states = append(states, tr.write("b", "b"), tr.write("c", "c"))
				}
				kv := newFakeKV(t)
				store := newMemStore()
				e, _ := newTestEngine(t, kv, store, func(o *Options) { o.Now = func() time.Time { return now } })
				rep, err := e.SyncOnce(context.Background(), complete(states...))
				if tc.fail != nil {
					failed, held := 1, 0
					if errors.Is(tc.fail, kvapi.ErrExpirationTooSoon) {
						failed, held = 0, 1
					}
					if err == nil || rep.Failed != failed || rep.HeldBack != held || !errors.Is(rep.Failures[0].Err, tc.fail) || !strings.Contains(rep.Failures[0].Err.Error(), st.Key) {
						t.Fatalf("%+v, %v; want a failure naming %s", rep, err, st.Key)
					}
					if _, ok := kv.get(st.Key); ok {
						t.Fatal("sent anyway")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				got, _ := kv.get(st.Key)
				if got.ttl != tc.wantTTL || got.exp != tc.wantAt {
					t.Fatalf("sent ttl=%d at=%d, want %d %d", got.ttl, got.exp, tc.wantTTL, tc.wantAt)
				}
				rec, _ := store.record(st.Key)
				if rec.ExpirationTTL != tc.wantTTL || rec.ExpirationAt != tc.wantAt {
					t.Fatalf("record %+v", rec)
				}
			})
		}
	}
}

// Rule 7: a fresh store reconciles: the namespace is listed, tree keys are
// rewritten, keys not in the tree are left alone and counted in the log.
func TestReconcileFreshStore(t *testing.T) {
	tr := newTree(t)
	a := tr.write("a", "new a")
	kv := newFakeKV(t)
	kv.set(a.Key, "old a")
	kv.set(testPrefix+"foreign1", "x")
	kv.set(testPrefix+"foreign2", "y")
	kv.set("elsewhere/z", "z")
	store := newMemStore()
	e, logs := newTestEngine(t, kv, store, func(o *Options) { o.Reconcile = true })
	rep, err := e.SyncOnce(context.Background(), complete(a))
	if err != nil || rep.Written != 1 || rep.Deleted != 0 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if kv.count(kvapi.OpList) != 1 || kv.count(kvapi.OpDelete, kvapi.OpBulkDelete) != 0 {
		t.Fatalf("calls %v", kv.calls)
	}
	mustContent(t, kv, a.Key, "new a")
	mustContent(t, kv, testPrefix+"foreign1", "x")
	if !strings.Contains(logs.String(), "not_in_tree=2") {
		t.Fatalf("log does not count the foreign keys:\n%s", logs)
	}
	if _, err := e.SyncOnce(context.Background(), complete(a)); err != nil || kv.count(kvapi.OpList) != 1 {
		t.Fatal("listed again on the second full sync")
	}
}

// The listing of a fresh store only informs the log, so the writes do not
// wait for it: here it cannot finish before a write was sent. SyncOnce
// still returns only after it, with the count logged.
func TestReconcileListingDoesNotDelayWrites(t *testing.T) {
	tr := newTree(t)
	a := tr.write("a", "a")
	kv := newFakeKV(t)
	kv.set(testPrefix+"foreign", "x")
	wrote := make(chan struct{})
	var once sync.Once
	kv.sent = func(kvapi.Op, []string) { once.Do(func() { close(wrote) }) }
	waitedOut := false
	kv.listing = func(ctx context.Context) {
		select {
		case <-wrote:
		case <-time.After(10 * time.Second):
			waitedOut = true
		}
	}
	e, logs := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.Reconcile = true; o.BulkThreshold = -1 })
	if _, err := e.SyncOnce(context.Background(), complete(a)); err != nil {
		t.Fatal(err)
	}
	if waitedOut {
		t.Fatal("the write waited for the listing of the fresh store")
	}
	if !strings.Contains(logs.String(), "not_in_tree=1") {
		t.Fatalf("SyncOnce returned before the listing was logged:\n%s", logs)
	}
}

// Metrics count by result.
func TestMetrics(t *testing.T) {
	tr := newTree(t)
	a, b := tr.write("a", "aaaa"), tr.write("b", "bb")
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test").Sync("test")
	store := newMemStore()
	store.PutBatch(testScope, map[string]state.Record{testPrefix + "old": {Hash: "h"}})
	kv := newFakeKV(t)
	kv.set(testPrefix+"old", "o")
	kv.putErr = func(key string) error {
		if key == b.Key {
			return apiErr(400, 10012)
		}
		return nil
	}
	e, _ := newTestEngine(t, kv, store, func(o *Options) { o.Metrics = m; o.BulkThreshold = -1 })
	if _, err := e.SyncOnce(context.Background(), complete(a, b)); err == nil {
		t.Fatal("want failure")
	}
	kv.putErr = nil
	if _, err := e.SyncOnce(context.Background(), complete(a, b)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.SyncOnce(context.Background(), complete(a, b)); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"success": 2, "rejected": 1, "skipped_unchanged": 3, "failed": 0}
	for r, v := range want {
		if got := testutil.ToFloat64(m.Uploads.WithLabelValues(r)); got != v {
			t.Errorf("uploads{%s} = %v, want %v", r, got, v)
		}
	}
	if got := testutil.ToFloat64(m.UploadBytes.WithLabelValues("success")); got != 6 {
		t.Errorf("upload bytes %v", got)
	}
	if got := testutil.ToFloat64(m.Deletes.WithLabelValues("success")); got != 1 {
		t.Errorf("deletes{success} = %v", got)
	}
	if got := testutil.ToFloat64(m.LastSuccess); got == 0 {
		t.Error("last success not set")
	}
	if got := testutil.ToFloat64(m.InflightUploads); got != 0 {
		t.Errorf("inflight %v", got)
	}
}

// Drain finishes queued work, then ignores new changes.
func TestDrain(t *testing.T) {
	tr := newTree(t)
	kv := newFakeKV(t)
	kv.latency = time.Millisecond
	e, logs := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.BulkThreshold = -1 })
	var states []desired.State
	for i := range 10 {
		states = append(states, tr.write(fmt.Sprintf("f%d", i), "x"))
	}
	e.Changed(states) // queued; no loop runs yet
	if err := e.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := kv.count(kvapi.OpPut); got != 10 {
		t.Fatalf("puts = %d", got)
	}
	e.Changed([]desired.State{tr.write("late", "x")})
	if got := kv.count(kvapi.OpPut); got != 10 || !strings.Contains(logs.String(), "draining") {
		t.Fatal("change accepted after Drain")
	}
	if _, err := e.SyncOnce(context.Background(), complete()); !errors.Is(err, ErrClosed) {
		t.Fatalf("SyncOnce after Drain: %v", err)
	}
}

// Drain gives up when its context ends, cancelling what is in flight.
func TestDrainGivesUp(t *testing.T) {
	tr := newTree(t)
	kv := newFakeKV(t)
	kv.latency = time.Hour
	store := newMemStore()
	e, _ := newTestEngine(t, kv, store, nil)
	e.Changed([]desired.State{tr.write("a", "a")})
	ctx, cancel := context.WithCancel(context.Background())
	kv.duringPut = func(context.Context, string) { cancel() }
	if err := e.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain = %v", err)
	}
	if rec, ok := store.record(testPrefix + "a"); !ok || !rec.Pending || store.len() != 1 {
		t.Fatalf("record of a cancelled write = %+v, %v; want only its intent mark", rec, ok)
	}
}

// Integration with the real state store: records survive a restart.
func TestWithStateStore(t *testing.T) {
	tr := newTree(t)
	a, b := tr.write("a", "a"), tr.write("dir/b", "b")
	path := t.TempDir() + "/state.db"
	st, err := state.Open(path, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kv := newFakeKV(t)
	e, _ := newTestEngine(t, kv, st, nil)
	if _, err := e.SyncOnce(context.Background(), complete(a, b)); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st, err = state.Open(path, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kv2 := newFakeKV(t)
	e2, _ := newTestEngine(t, kv2, st, nil)
	if _, err := e2.SyncOnce(context.Background(), complete(a, b)); err != nil || kv2.total() != 0 {
		t.Fatalf("restart: %v, %d calls", err, kv2.total())
	}
	if err := os.Remove(tr.state("a").Path); err != nil {
		t.Fatal(err)
	}
	rep, err := e2.SyncOnce(context.Background(), complete(b))
	if err != nil || rep.Deleted != 1 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if _, ok := kv2.get(a.Key); ok || kv2.count(kvapi.OpDelete) != 1 {
		t.Fatal("not deleted")
	}
}

// The last-successful-sync gauge moves after a clean full sync and whenever
// the daemon has caught up since, but not while a key is held back or failed.
func TestLastSuccessTracksCaughtUp(t *testing.T) {
	tr := newTree(t)
	a := tr.write("a", "a")
	b := tr.write("b", "b")
	kv := newFakeKV(t)
	m := metrics.New(prometheus.NewRegistry(), "test").Sync("test")
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func() { mu.Lock(); now = now.Add(time.Minute); mu.Unlock() }
	e, _ := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.Metrics = m; o.Now = clock; o.BulkThreshold = -1 })
	running(t, e)

	e.Snapshot(complete(a, b))
	waitIdle(t, e)
	if got := testutil.ToFloat64(m.LastSuccess); got != float64(clock().Unix()) {
		t.Fatalf("after a clean full sync: %v, want %v", got, clock().Unix())
	}

	advance()
	a2 := tr.write("a", "a, changed")
	e.Changed([]desired.State{a2})
	waitIdle(t, e)
	if got := testutil.ToFloat64(m.LastSuccess); got != float64(clock().Unix()) {
		t.Fatalf("after catching up with a change: %v, want %v", got, clock().Unix())
	}

	stale := clock().Unix()
	advance()
	heldB := tr.write("b", "b, changed")
	heldB.Err = errors.New("invalid sidecar")
	e.Changed([]desired.State{heldB})
	a3 := tr.write("a", "a, changed again")
	e.Changed([]desired.State{a3})
	waitIdle(t, e)
	if got := testutil.ToFloat64(m.LastSuccess); got != float64(stale) {
		t.Fatalf("moved to %v while b is held back, want it to stay %v", got, stale)
	}

	advance()
	fixed := tr.write("b", "b, changed")
	e.Changed([]desired.State{fixed})
	waitIdle(t, e)
	if got := testutil.ToFloat64(m.LastSuccess); got != float64(clock().Unix()) {
		t.Fatalf("after the held-back key was fixed: %v, want %v", got, clock().Unix())
	}
}

// TestPassedAtLoggedOnce: an `at` that passes while kvsync runs holds back
// every file its rule matches with one log line, not one per file.
func TestPassedAtLoggedOnce(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tr := newTree(t)
	var states []desired.State
	for _, name := range []string{"a", "b", "c"} {
		st := tr.write(name, name)
		st.Expiration = desired.Expiration{At: now.Add(-time.Minute)}
		states = append(states, st)
	}
	kv := newFakeKV(t)
	e, logs := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.Now = func() time.Time { return now } })
	rep, _ := e.SyncOnce(context.Background(), complete(states...))
	if rep.HeldBack != 3 || rep.Failed != 0 || kv.count(kvapi.OpPut)+kv.count(kvapi.OpBulkPut) != 0 {
		t.Fatalf("%+v; want 3 held back and nothing sent", rep)
	}
	if n := strings.Count(logs.String(), "expiration rule's `at` has passed"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs)
	}
}
