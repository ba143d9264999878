package uploader

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/kvsync/kvsync/internal/state"
)

// lookupStore counts the keys looked up (by Get or GetMany) and, with hide
// set, hides every record from ForEach: a record made after the pass looked
// for any.
type lookupStore struct {
	*memStore
	gets atomic.Int64
	hide bool
}

func (s *lookupStore) Get(scope, key string) (state.Record, bool, error) {
	s.gets.Add(1)
	return s.memStore.Get(scope, key)
}

func (s *lookupStore) GetMany(scope string, keys []string) (map[string]state.Record, error) {
	s.gets.Add(int64(len(keys)))
	return s.memStore.GetMany(scope, keys)
}

func (s *lookupStore) ForEach(scope, prefix string, fn func(string, state.Record) error) error {
	return s.ForEachFrom(scope, prefix, "", fn)
}

func (s *lookupStore) ForEachFrom(scope, prefix, from string, fn func(string, state.Record) error) error {
	if s.hide {
		return nil
	}
	return s.memStore.ForEachFrom(scope, prefix, from, fn)
}

// On a first publish the offer looks nothing up: only the worker's check
// before the write reads the store, once per key.
func TestFirstPassSkipsOfferLookups(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		name := map[bool]string{false: "single", true: "bulk"}[bulk]
		t.Run(name, func(t *testing.T) {
			tr := newTree(t)
			states := complete(tr.write("a.txt", "alpha"), tr.write("b.txt", "bravo"), tr.write("c.txt", "charlie"))
			store := &lookupStore{memStore: newMemStore()}
			kv := newFakeKV(t)
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				if !bulk {
					o.BulkThreshold = -1
				}
			})
			rep, err := e.SyncOnce(context.Background(), states)
			if err != nil || rep.Written != 3 {
				t.Fatalf("%+v, %v", rep, err)
			}
			if got := store.gets.Load(); got != 3 {
				t.Errorf("store lookups = %d, want 3 (one per key, by the worker)", got)
			}
			// The next pass finds records: the offer compares again.
			store.gets.Store(0)
			rep, err = e.SyncOnce(context.Background(), states)
			if err != nil || rep.Unchanged != 3 || rep.Written != 0 {
				t.Fatalf("second pass %+v, %v", rep, err)
			}
			if got := store.gets.Load(); got != 3 {
				t.Errorf("second pass: store lookups = %d, want 3 (one per key, by the offer)", got)
			}
		})
	}
}

// A record that appears after a pass found none is still compared, by the
// worker: a key it shows unchanged is not written, a changed one is.
func TestRecordMadeDuringFirstPassIsCompared(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		name := map[bool]string{false: "single", true: "bulk"}[bulk]
		t.Run(name, func(t *testing.T) {
			tr := newTree(t)
			same, changed, fresh := tr.write("a.txt", "alpha"), tr.write("b.txt", "bravo"), tr.write("c.txt", "charlie")
			store := &lookupStore{memStore: newMemStore(), hide: true}
			recs := map[string]state.Record{
				same.Key:    {Hash: same.Hash, Size: same.Size},
				changed.Key: {Hash: sha256Hex([]byte("old bravo")), Size: 9},
			}
			if err := store.PutBatch(testScope, recs); err != nil {
				t.Fatal(err)
			}
			kv := newFakeKV(t)
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				if !bulk {
					o.BulkThreshold = -1
				}
			})
			rep, err := e.SyncOnce(context.Background(), complete(same, changed, fresh))
			if err != nil || rep.Written != 2 || rep.Unchanged != 1 {
				t.Fatalf("%+v, %v; want 2 written, 1 unchanged", rep, err)
			}
			if _, ok := kv.get(same.Key); ok {
				t.Errorf("unchanged key %s was written", same.Key)
			}
			mustContent(t, kv, changed.Key, "bravo")
			mustContent(t, kv, fresh.Key, "charlie")
		})
	}
}

// plainStore has only Store's methods: no GetMany.
type plainStore struct{ Store }

// A bulk batch compares each key with its record whether the Store reads a
// batch's records at once or only one at a time.
func TestBulkComparesWithAndWithoutGetMany(t *testing.T) {
	stores := map[string]func(*memStore) Store{
		"GetMany":  func(m *memStore) Store { return m },
		"Get only": func(m *memStore) Store { return plainStore{m} },
	}
	for name, wrap := range stores {
		t.Run(name, func(t *testing.T) {
			tr := newTree(t)
			same, changed, fresh := tr.write("a.txt", "alpha"), tr.write("b.txt", "bravo"), tr.write("c.txt", "charlie")
			mem := newMemStore()
			recs := map[string]state.Record{
				same.Key:    {Hash: same.Hash, Size: same.Size},
				changed.Key: {Hash: sha256Hex([]byte("old bravo")), Size: 9},
			}
			if err := mem.PutBatch(testScope, recs); err != nil {
				t.Fatal(err)
			}
			kv := newFakeKV(t)
			e, _ := newTestEngine(t, kv, wrap(mem), nil)
			// The batch is given to putBulk directly: queued through the
			// engine, the unchanged key would be settled by the offer.
			ctx := context.Background()
			rs := e.putBulk(ctx, []*item{{st: same}, {st: changed}, {st: fresh}})
			kinds := map[string]outKind{}
			for _, r := range rs {
				kinds[r.it.st.Key] = r.out.kind
			}
			want := map[string]outKind{same.Key: outUnchanged, changed.Key: outWritten, fresh.Key: outWritten}
			for k, w := range want {
				if kinds[k] != w {
					t.Errorf("%s: outcome %v, want %v", k, kinds[k], w)
				}
			}
			if _, ok := kv.get(same.Key); ok {
				t.Errorf("unchanged key %s was written", same.Key)
			}
			mustContent(t, kv, changed.Key, "bravo")
			mustContent(t, kv, fresh.Key, "charlie")
			for _, k := range []string{changed.Key, fresh.Key} {
				if r, ok := mem.record(k); !ok || r.Pending || r.Hash == "" {
					t.Errorf("%s: record %+v, %v; want a clean record", k, r, ok)
				}
			}
		})
	}
}
