package uploader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// seeded returns a store and KV in which kvsync wrote n keys old0..old{n-1}
// under the prefix, plus a key it never wrote.
func seeded(t *testing.T, n int) (*memStore, *fakeKV) {
	t.Helper()
	store := newMemStore()
	kv := newFakeKV(t)
	recs := map[string]state.Record{}
	for i := range n {
		k := fmt.Sprintf("%sold%d", testPrefix, i)
		recs[k] = state.Record{Hash: "h", Metadata: json.RawMessage(`{"v":1}`), Written: time.Unix(1, 0)}
		kv.set(k, "old")
	}
	store.PutBatch(testScope, recs)
	kv.set(testPrefix+"foreign", "not ours")
	return store, kv
}

// Rule 4: every delete-safety case deletes nothing, and says why.
func TestDeleteSafety(t *testing.T) {
	cases := []struct {
		name   string
		states func(tr *tree) []desired.State
		snap   func([]desired.State) desired.Snapshot
		mod    func(*Options)
		putErr error
		reason string
	}{
		{
			name:   "empty root",
			states: func(*tree) []desired.State { return nil },
			reason: "tree has no files but 3 keys",
		},
		{
			name:   "incomplete snapshot",
			states: func(tr *tree) []desired.State { return []desired.State{tr.write("new", "n")} },
			snap: func(s []desired.State) desired.Snapshot {
				return desired.Snapshot{States: s, Complete: false, Reason: "permission denied: /srv/site/sub"}
			},
			reason: "snapshot incomplete (permission denied: /srv/site/sub)",
		},
		{
			name:   "max deletes",
			states: func(tr *tree) []desired.State { return []desired.State{tr.write("new", "n")} },
			mod:    func(o *Options) { o.MaxDeletes = 2 },
			reason: "3 keys would be deleted, more than max_deletes=2; nothing deleted",
		},
		{
			name:   "max deletes zero",
			states: func(tr *tree) []desired.State { return []desired.State{tr.write("new", "n")} },
			mod:    func(o *Options) { o.MaxDeletes = 0 },
			reason: "more than max_deletes=0",
		},
		{
			name:   "failed upload in the same pass",
			states: func(tr *tree) []desired.State { return []desired.State{tr.write("new", "n")} },
			putErr: apiErr(500, 10001),
			reason: "writes failed",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store, kv := seeded(t, 3)
			if tc.putErr != nil {
				kv.putErr = func(string) error { return tc.putErr }
			}
			reg := prometheus.NewRegistry()
			m := metrics.New(reg, "test").Sync("test")
			e, logs := newTestEngine(t, kv, store, func(o *Options) {
				o.Metrics = m
				o.RetryBackoff = time.Hour
				if tc.mod != nil {
					tc.mod(o)
				}
			})
			states := tc.states(newTree(t))
			snap := complete(states...)
			if tc.snap != nil {
				snap = tc.snap(states)
			}
			rep, err := e.SyncOnce(context.Background(), snap)
			if !errors.Is(err, ErrSyncIncomplete) {
				t.Fatalf("SyncOnce error %v, want ErrSyncIncomplete", err)
			}
			if !strings.Contains(rep.DeletesRefused, tc.reason) {
				t.Fatalf("DeletesRefused %q, want it to contain %q", rep.DeletesRefused, tc.reason)
			}
			if n := kv.count(kvapi.OpDelete, kvapi.OpBulkDelete); n != 0 || rep.Deleted != 0 {
				t.Fatalf("%d delete requests", n)
			}
			for i := range 3 {
				mustContent(t, kv, fmt.Sprintf("%sold%d", testPrefix, i), "old")
			}
			if store.len() < 3 {
				t.Fatal("records dropped")
			}
			if !strings.Contains(logs.String(), tc.reason) {
				t.Fatalf("log does not say why:\n%s", logs)
			}
			if testutil.ToFloat64(m.Deletes.WithLabelValues("success")) != 0 {
				t.Fatal("deletes counted")
			}
			// The daemon's Snapshot applies the same rules.
			e2, _ := newTestEngine(t, kv, store, func(o *Options) {
				o.RetryBackoff = time.Hour
				if tc.mod != nil {
					tc.mod(o)
				}
			})
			running(t, e2)
			e2.Snapshot(snap)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for {
				e2.mu.Lock()
				open := e2.openPasses
				e2.mu.Unlock()
				if open == 0 {
					break
				}
				if ctx.Err() != nil {
					t.Fatal("pass never finished")
				}
				time.Sleep(time.Millisecond)
			}
			if n := kv.count(kvapi.OpDelete, kvapi.OpBulkDelete); n != 0 {
				t.Fatalf("daemon snapshot deleted: %d requests", n)
			}
		})
	}
}

// Rule 4: only keys kvsync wrote are deleted; a deletion for a key without
// a record touches nothing.
func TestDeleteOnlyOwnKeys(t *testing.T) {
	store, kv := seeded(t, 1)
	e, logs := newTestEngine(t, kv, store, nil)
	running(t, e)
	e.Changed([]desired.State{{Key: testPrefix + "foreign", Deleted: true}})
	waitIdle(t, e)
	if kv.total() != 0 {
		t.Fatalf("calls %v", kv.calls)
	}
	mustContent(t, kv, testPrefix+"foreign", "not ours")
	if !strings.Contains(logs.String(), "never wrote") {
		t.Fatalf("not logged:\n%s", logs)
	}
	// A full sync never lists KV for deletions either: foreign stays.
	rep, err := e.SyncOnce(context.Background(), complete(newTree(t).write("x", "x")))
	if err != nil || rep.Deleted != 1 {
		t.Fatalf("%+v, %v", rep, err)
	}
	mustContent(t, kv, testPrefix+"foreign", "not ours")
}

// Rule 4: a key outside the prefix is never deleted.
func TestDeleteOutsidePrefixIgnored(t *testing.T) {
	store := newMemStore()
	store.PutBatch(testScope, map[string]state.Record{"other/k": {Hash: "h"}})
	kv := newFakeKV(t)
	kv.set("other/k", "v")
	e, _ := newTestEngine(t, kv, store, nil)
	running(t, e)
	e.Changed([]desired.State{{Key: "other/k", Deleted: true}})
	waitIdle(t, e)
	rep, err := e.SyncOnce(context.Background(), complete(newTree(t).write("x", "x")))
	if err != nil || rep.Deleted != 0 || kv.count(kvapi.OpDelete, kvapi.OpBulkDelete) != 0 {
		t.Fatalf("%+v, %v, %v", rep, err, kv.calls)
	}
}

// Rule 4: deletions per policy; more than one pending goes in one bulk
// delete, after the pass's writes.
func TestDeletePolicies(t *testing.T) {
	cases := []struct {
		name     string
		policy   DeletePolicy
		n        int
		requests map[kvapi.Op]int
		deleted  int
		kept     int
	}{
		{"delete one", DeleteRemove, 1, map[kvapi.Op]int{kvapi.OpDelete: 1}, 1, 0},
		{"delete many in bulk", DeleteRemove, 5, map[kvapi.Op]int{kvapi.OpBulkDelete: 1}, 5, 0},
		{"keep", DeleteKeep, 3, map[kvapi.Op]int{}, 0, 3},
		{"expire", DeleteExpire, 2, map[kvapi.Op]int{kvapi.OpGet: 2, kvapi.OpPut: 2}, 2, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store, kv := seeded(t, tc.n)
			e, _ := newTestEngine(t, kv, store, func(o *Options) { o.Delete = tc.policy; o.DeleteTTL = time.Hour })
			tr := newTree(t)
			keep := tr.write("keep", "k")
			rep, err := e.SyncOnce(context.Background(), complete(keep))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Deleted != tc.deleted || rep.Kept != tc.kept || rep.Written != 1 {
				t.Fatalf("report %+v", rep)
			}
			kv.mu.Lock()
			calls := map[kvapi.Op]int{}
			for op, c := range kv.calls {
				if op != kvapi.OpPut || tc.policy == DeleteExpire {
					calls[op] = c
				}
			}
			kv.mu.Unlock()
			want := map[kvapi.Op]int{}
			for op, c := range tc.requests {
				want[op] = c
			}
			if tc.policy == DeleteExpire {
				want[kvapi.OpPut]++ // the write of "keep"
			}
			if fmt.Sprint(calls) != fmt.Sprint(want) {
				t.Fatalf("requests %v, want %v", calls, want)
			}
			if store.len() != 1 {
				t.Fatalf("%d records left, want only keep's", store.len())
			}
			for i := range tc.n {
				k := fmt.Sprintf("%sold%d", testPrefix, i)
				got, ok := kv.get(k)
				switch tc.policy {
				case DeleteRemove:
					if ok {
						t.Fatalf("%s not deleted", k)
					}
				case DeleteKeep:
					mustContent(t, kv, k, "old")
				case DeleteExpire:
					if !ok || string(got.value) != "old" || got.ttl != 3600 || string(got.meta) != `{"v":1}` {
						t.Fatalf("%s after expire: %+v", k, got)
					}
				}
			}
			mustContent(t, kv, testPrefix+"foreign", "not ours")
		})
	}
}

// Rule 4: held-back states are neither written nor deleted, and fail SyncOnce.
func TestHeldBack(t *testing.T) {
	store, kv := seeded(t, 1)
	tr := newTree(t)
	bad := tr.write("bad", "new content")
	bad.Err = errors.New("invalid sidecar bad.meta.json: not a JSON object")
	// It was written before: a record exists and its file still exists.
	old := desired.State{Key: testPrefix + "old0", Path: bad.Path, Err: errors.New("unreadable")}
	e, _ := newTestEngine(t, kv, store, nil)
	rep, err := e.SyncOnce(context.Background(), complete(bad, old, tr.write("ok", "ok")))
	if !errors.Is(err, ErrSyncIncomplete) || rep.HeldBack != 2 || rep.Written != 1 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if len(rep.Failures) != 2 || rep.Failures[0].Key != bad.Key || !strings.Contains(rep.Failures[0].Err.Error(), "sidecar") {
		t.Fatalf("failures %+v", rep.Failures)
	}
	if _, ok := kv.get(bad.Key); ok {
		t.Fatal("held-back key written")
	}
	mustContent(t, kv, testPrefix+"old0", "old")
	if kv.count(kvapi.OpDelete, kvapi.OpBulkDelete) != 0 {
		t.Fatal("held-back key deleted")
	}
	// A held-back change drops the key's queued older state.
	e2, _ := newTestEngine(t, kv, store, nil)
	good := tr.write("later", "v1")
	held := good
	held.Err = errors.New("oversized")
	e2.Changed([]desired.State{good, held})
	running(t, e2)
	waitIdle(t, e2)
	if _, ok := kv.get(good.Key); ok {
		t.Fatal("held-back key's older state written")
	}
}

// A deletion planned by a full sync is skipped when the key was written
// again (its file came back) before the deletion ran.
func TestPlannedDeletionSupersededByRewrite(t *testing.T) {
	store, kv := seeded(t, 1)
	tr := newTree(t)
	back := tr.write("old0", "back again")
	e, _ := newTestEngine(t, kv, store, nil)
	// Plan the deletion, then rewrite the key before it runs.
	rec, _ := store.record(back.Key)
	it := &item{st: desired.State{Key: back.Key, Deleted: true}, expect: &rec}
	store.PutBatch(testScope, map[string]state.Record{back.Key: {Hash: back.Hash, Written: time.Now()}})
	r := e.deleteOne(context.Background(), it)
	if r.out.kind != outSuperseded || kv.count(kvapi.OpDelete) != 0 {
		t.Fatalf("outcome %v, %d deletes", r.out.kind, kv.count(kvapi.OpDelete))
	}
}

// Deleted states from the watcher delete kvsync's keys while running.
func TestChangedDeletion(t *testing.T) {
	store, kv := seeded(t, 3)
	e, _ := newTestEngine(t, kv, store, func(o *Options) { o.MaxDeletes = 3 })
	var dels []desired.State
	for i := range 3 {
		dels = append(dels, desired.State{Key: fmt.Sprintf("%sold%d", testPrefix, i), Deleted: true})
	}
	e.Changed(dels)
	running(t, e)
	waitIdle(t, e)
	if kv.count(kvapi.OpBulkDelete) != 1 || store.len() != 0 {
		t.Fatalf("calls %v, %d records", kv.calls, store.len())
	}
	mustContent(t, kv, testPrefix+"foreign", "not ours")
}

// The deletions the watcher reports between two full syncs count as one
// pass against MaxDeletes: past it, keys are kept, and the next full sync
// decides with its own count, after which the count starts again.
func TestChangedDeletionsCappedUntilFullSync(t *testing.T) {
	const n, limit = 5, 3
	store, kv := seeded(t, n)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test").Sync("test")
	e, logs := newTestEngine(t, kv, store, func(o *Options) { o.MaxDeletes = limit; o.Metrics = m })
	running(t, e)
	key := func(i int) string { return fmt.Sprintf("%sold%d", testPrefix, i) }
	for i := range n {
		e.Changed([]desired.State{{Key: key(i), Deleted: true}})
	}
	waitIdle(t, e)
	if store.len() != n-limit {
		t.Fatalf("%d records left, want %d; calls %v", store.len(), n-limit, kv.calls)
	}
	for i := range n {
		_, inKV := kv.get(key(i))
		if want := i >= limit; inKV != want {
			t.Errorf("%s in KV: %v, want %v", key(i), inKV, want)
		}
	}
	if got := testutil.ToFloat64(m.Deletes.WithLabelValues("kept")); got != n-limit {
		t.Errorf("deletes kept metric %v, want %d", got, n-limit)
	}
	if !strings.Contains(logs.String(), "max_deletes") {
		t.Errorf("the refusal is not logged:\n%s", logs)
	}

	// The full sync finds both files still gone: within its own cap, it
	// deletes them.
	rep, err := e.SyncOnce(context.Background(), complete(newTree(t).write("x", "x")))
	if err != nil || rep.Deleted != n-limit || store.len() != 1 {
		t.Fatalf("full sync %+v, %v; %d records", rep, err, store.len())
	}
	mustContent(t, kv, testPrefix+"foreign", "not ours")

	// A new window: the watcher may delete again.
	e.Changed([]desired.State{{Key: testPrefix + "x", Deleted: true}})
	waitIdle(t, e)
	if _, ok := kv.get(testPrefix + "x"); ok || store.len() != 0 {
		t.Fatalf("x not deleted after the full sync reset the count; calls %v", kv.calls)
	}
}

// Failed deletions: a retryable error is retried after the backoff until it
// succeeds; a permanent one is reported and the record kept; keys left in
// unsuccessful_keys are retried.
func TestDeleteFailures(t *testing.T) {
	cases := []struct {
		name     string
		n        int
		err      error
		failures int // how many calls fail before success
		wantGone bool
	}{
		{"single retryable", 1, apiErr(503, 10001), 2, true},
		{"bulk retryable", 3, apiErr(502, 10001), 1, true},
		{"single permanent", 1, apiErr(403, 10000), 100, false},
		{"bulk permanent", 3, apiErr(403, 10000), 100, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store, kv := seeded(t, tc.n)
			var mu sync.Mutex
			calls := 0
			kv.deleteErr = func(string) error {
				mu.Lock()
				defer mu.Unlock()
				calls++
				if calls <= tc.failures {
					return tc.err
				}
				return nil
			}
			e, logs := newTestEngine(t, kv, store, nil)
			var dels []desired.State
			for i := range tc.n {
				dels = append(dels, desired.State{Key: fmt.Sprintf("%sold%d", testPrefix, i), Deleted: true})
			}
			e.Changed(dels)
			running(t, e)
			waitIdle(t, e)
			_, present := kv.get(testPrefix + "old0")
			if present == tc.wantGone {
				t.Fatalf("key present = %v after %d calls", present, calls)
			}
			if !tc.wantGone {
				if store.len() != tc.n {
					t.Fatal("record of an undeleted key dropped")
				}
				if !strings.Contains(logs.String(), "cf_codes=[10000]") {
					t.Fatalf("log lacks the code:\n%s", logs)
				}
			} else if store.len() != 0 {
				t.Fatal("records of deleted keys kept")
			}
		})
	}
	t.Run("bulk unsuccessful", func(t *testing.T) {
		store, kv := seeded(t, 3)
		var mu sync.Mutex
		first := true
		e, _ := newTestEngine(t, &unsuccessfulDeletes{fakeKV: kv, fail: func(keys []string) []string {
			mu.Lock()
			defer mu.Unlock()
			if first {
				first = false
				return keys[:1]
			}
			return nil
		}}, store, nil)
		rep, err := e.SyncOnce(context.Background(), complete(newTree(t).write("x", "x")))
		if err != nil || rep.Deleted != 3 || store.len() != 1 {
			t.Fatalf("%+v, %v, %d records", rep, err, store.len())
		}
	})
}

// unsuccessfulDeletes reports some keys of a bulk delete as unsuccessful.
type unsuccessfulDeletes struct {
	*fakeKV
	fail func(keys []string) []string
}

func (u *unsuccessfulDeletes) BulkDelete(ctx context.Context, ns string, keys []string) (kvapi.BulkResult, error) {
	bad := u.fail(keys)
	var ok []string
	for _, k := range keys {
		if !slices.Contains(bad, k) {
			ok = append(ok, k)
		}
	}
	res, err := u.fakeKV.BulkDelete(ctx, ns, ok)
	res.Unsuccessful = bad
	return res, err
}

// The expire policy skips the rewrite when the key expires soon enough by
// itself, and forgets a key already gone.
func TestExpireShortcuts(t *testing.T) {
	now := time.Now()
	store, kv := seeded(t, 2)
	kv.mu.Lock()
	kv.data[testPrefix+"old0"] = fakeEntry{value: []byte("old"), exp: now.Add(time.Minute).Unix()}
	delete(kv.data, testPrefix+"old1")
	kv.mu.Unlock()
	e, _ := newTestEngine(t, kv, store, func(o *Options) {
		o.Delete = DeleteExpire
		o.DeleteTTL = time.Hour
		o.Now = func() time.Time { return now }
	})
	rep, err := e.SyncOnce(context.Background(), complete(newTree(t).write("x", "x")))
	if err != nil || rep.Deleted != 2 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if kv.count(kvapi.OpGet) != 2 || kv.count(kvapi.OpPut) != 1 || store.len() != 1 {
		t.Fatalf("calls %v, %d records", kv.calls, store.len())
	}
}
