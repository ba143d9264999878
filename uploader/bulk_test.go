package uploader

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
)

// Rule 3: bulk batches are bounded by pairs and by bytes; each is one
// request.
func TestBulkBatching(t *testing.T) {
	cases := []struct {
		name       string
		files      int
		size       int
		mod        func(*Options)
		maxPairs   int
		maxBytes   int64
		wantBulks  int
		wantSingle int
	}{
		{"by pairs", 7, 10, func(o *Options) { o.BulkMaxPairs = 3 }, 3, 0, 2, 1},
		{"by bytes", 10, 1000, func(o *Options) { o.BulkThreshold = 1000; o.BulkMaxBytes = 5000 }, 0, 5000, 3, 0},
		{"one request for many", 500, 100, nil, 0, 0, 1, 0},
		{"large files streamed", 3, 2000, func(o *Options) { o.BulkThreshold = 1000; o.BulkMaxBytes = 5000 }, 0, 0, 0, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			var states []desired.State
			for i := range tc.files {
				states = append(states, tr.write(fmt.Sprintf("f%03d", i), strings.Repeat("y", tc.size)))
			}
			kv := newFakeKV(t)
			store := newMemStore()
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				o.Concurrency = 1 // deterministic batch boundaries
				if tc.mod != nil {
					tc.mod(o)
				}
			})
			rep, err := e.SyncOnce(context.Background(), complete(states...))
			if err != nil || rep.Written != tc.files {
				t.Fatalf("%+v, %v", rep, err)
			}
			if got := kv.count(kvapi.OpBulkPut); got != tc.wantBulks {
				t.Fatalf("bulk requests = %d, want %d (%+v)", got, tc.wantBulks, kv.bulks)
			}
			if got := kv.count(kvapi.OpPut); got != tc.wantSingle {
				t.Fatalf("single puts = %d, want %d", got, tc.wantSingle)
			}
			for _, b := range kv.bulks {
				if tc.maxPairs > 0 && b.pairs > tc.maxPairs {
					t.Fatalf("bulk of %d pairs > %d", b.pairs, tc.maxPairs)
				}
				if tc.maxBytes > 0 && b.bytes+int64(b.pairs)*(pairOverhead+int64(len(testPrefix)+4)) > tc.maxBytes {
					t.Fatalf("bulk of %d bytes in %d pairs exceeds %d", b.bytes, b.pairs, tc.maxBytes)
				}
			}
			if store.len() != tc.files {
				t.Fatalf("%d records", store.len())
			}
		})
	}
}

// The bulk writes in flight together hold at most twice BulkMaxBytes of
// values, however high Concurrency is, and small files waiting for room are
// not streamed one by one meanwhile.
func TestBulkMemoryBoundedAcrossJobs(t *testing.T) {
	const size, maxBytes = 1000, 5000
	tr := newTree(t)
	var states []desired.State
	for i := range 60 {
		states = append(states, tr.write(fmt.Sprintf("f%03d", i), strings.Repeat("m", size)))
	}
	kv := newFakeKV(t)
	kv.latency = 5 * time.Millisecond
	var mu sync.Mutex
	var inflight, peak int64
	two := make(chan struct{}) // closed once two bulk writes overlap
	kv.sent = func(op kvapi.Op, keys []string) {
		if op != kvapi.OpBulkPut {
			return
		}
		mu.Lock()
		inflight += int64(len(keys)) * size
		peak = max(peak, inflight)
		if inflight > int64(len(keys))*size {
			select {
			case <-two:
			default:
				close(two)
			}
		}
		mu.Unlock()
		// Hold the first write until a second one overlaps it, so the
		// test sees concurrent batches whatever the machine's speed.
		select {
		case <-two:
		case <-time.After(10 * time.Second):
			t.Error("no two bulk writes ever overlapped")
		}
	}
	kv.applied = func(op kvapi.Op, keys []string) error {
		if op == kvapi.OpBulkPut {
			mu.Lock()
			inflight -= int64(len(keys)) * size
			mu.Unlock()
		}
		return nil
	}
	e, _ := newTestEngine(t, kv, newMemStore(), func(o *Options) {
		o.Concurrency = 8
		o.BulkThreshold = size
		o.BulkMaxBytes = maxBytes
	})
	rep, err := e.SyncOnce(context.Background(), complete(states...))
	if err != nil || rep.Written != len(states) {
		t.Fatalf("%+v, %v", rep, err)
	}
	if peak > 2*maxBytes {
		t.Errorf("bulk writes in flight held %d value bytes at once, want at most %d", peak, 2*maxBytes)
	}
	if n := kv.count(kvapi.OpPut); n != 0 {
		t.Errorf("%d files streamed alone while bulk writes waited for memory", n)
	}
}

// Rule 3: outside a full sync, a burst of at least BulkMinPending small
// changes is batched; a single change is streamed.
func TestChangedBurstUsesBulk(t *testing.T) {
	tr := newTree(t)
	gate := make(chan struct{})
	kv := newFakeKV(t)
	var once sync.Once
	started := make(chan struct{})
	kv.duringPut = func(ctx context.Context, _ string) {
		once.Do(func() {
			close(started)
			select {
			case <-gate:
			case <-ctx.Done():
			}
		})
	}
	e, _ := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.Concurrency = 1; o.BulkMinPending = 4 })
	running(t, e)
	e.Changed([]desired.State{tr.write("first", "1")})
	<-started
	var burst []desired.State
	for i := range 6 {
		burst = append(burst, tr.write(fmt.Sprintf("b%d", i), "x"))
	}
	e.Changed(burst) // queued while the first write is held at the gate
	close(gate)
	waitIdle(t, e)
	if p, b := kv.count(kvapi.OpPut), kv.count(kvapi.OpBulkPut); p != 1 || b != 1 {
		t.Fatalf("puts %d, bulks %d; want 1 and 1", p, b)
	}
}

// Rule 3: keys in unsuccessful_keys are retried, a few times, then failed
// and retried after the backoff; nothing is dropped.
func TestUnsuccessfulKeysRetried(t *testing.T) {
	tr := newTree(t)
	a, b, c := tr.write("a", "a"), tr.write("b", "b"), tr.write("c", "c")
	t.Run("once", func(t *testing.T) {
		kv := newFakeKV(t)
		var mu sync.Mutex
		failed := false
		kv.bulkFail = func(keys []string) []string {
			mu.Lock()
			defer mu.Unlock()
			if !failed {
				failed = true
				return []string{b.Key}
			}
			return nil
		}
		store := newMemStore()
		e, _ := newTestEngine(t, kv, store, nil)
		rep, err := e.SyncOnce(context.Background(), complete(a, b, c))
		if err != nil || rep.Written != 3 {
			t.Fatalf("%+v, %v", rep, err)
		}
		if got := kv.writes(); got != 2 {
			t.Fatalf("write requests %d, want 2 (the bulk and one retry)", got)
		}
		// One intent mark for the bulk request and one record per
		// confirmed request; b, still marked, needs no second mark.
		if rec, ok := store.record(b.Key); !ok || rec.Pending || store.puts != 3 {
			t.Fatalf("record of b %+v, %v; store written %d times, want 3", rec, ok, store.puts)
		}
		mustContent(t, kv, b.Key, "b")
	})
	t.Run("always", func(t *testing.T) {
		kv := newFakeKV(t)
		var mu sync.Mutex
		stuck := true
		kv.bulkFail = func(keys []string) []string {
			mu.Lock()
			defer mu.Unlock()
			if stuck && len(keys) > 1 {
				return []string{b.Key}
			}
			return nil
		}
		kv.putErr = func(key string) error {
			mu.Lock()
			defer mu.Unlock()
			if stuck && key == b.Key {
				return apiErr(503, 10001)
			}
			return nil
		}
		store := newMemStore()
		e, _ := newTestEngine(t, kv, store, func(o *Options) { o.RetryBackoff = time.Hour })
		rep, err := e.SyncOnce(context.Background(), complete(a, b, c))
		if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != 1 || rep.Written != 2 || rep.Failures[0].Key != b.Key {
			t.Fatalf("%+v, %v", rep, err)
		}
		if rec, ok := store.record(b.Key); !ok || !rec.Pending {
			t.Fatalf("unwritten key's record = %+v, %v; want its intent mark", rec, ok)
		}
		e.mu.Lock()
		_, delayed := e.delayed[b.Key]
		e.mu.Unlock()
		if !delayed {
			t.Fatal("failed key was dropped instead of waiting for a retry")
		}
		mu.Lock()
		stuck = false
		mu.Unlock()
		running(t, e)
		if err := e.Drain(context.Background()); err != nil { // retries at once
			t.Fatal(err)
		}
		if rec, ok := store.record(b.Key); !ok || rec.Pending {
			t.Fatalf("key not written on retry: %+v, %v", rec, ok)
		}
	})
}

// A bulk request refused as a whole (400) is split until the bad pair is
// alone; the others are written.
func TestBulkRefusedIsSplit(t *testing.T) {
	tr := newTree(t)
	var states []desired.State
	for i := range 8 {
		states = append(states, tr.write(fmt.Sprintf("f%d", i), "v"))
	}
	bad := states[5].Key
	kv := newFakeKV(t)
	kv.bulkErr = func(keys []string) error {
		for _, k := range keys {
			if k == bad {
				return apiErr(400, 10012)
			}
		}
		return nil
	}
	kv.putErr = func(key string) error {
		if key == bad {
			return apiErr(400, 10012)
		}
		return nil
	}
	store := newMemStore()
	e, logs := newTestEngine(t, kv, store, nil)
	rep, err := e.SyncOnce(context.Background(), complete(states...))
	if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != 1 || rep.Written != 7 {
		t.Fatalf("%+v, %v", rep, err)
	}
	for _, st := range states {
		rec, ok := store.record(st.Key)
		if st.Key == bad {
			if ok {
				t.Fatalf("record of the refused %s = %+v; want none", st.Key, rec)
			}
			continue
		}
		if !ok || rec.Pending {
			t.Fatalf("record of %s = %+v, %v; want a clean one", st.Key, rec, ok)
		}
	}
	if !strings.Contains(logs.String(), "cf_codes=[10012]") {
		t.Fatalf("log lacks the Cloudflare code:\n%s", logs)
	}
}
