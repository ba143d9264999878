package uploader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// ambiguous scripts a fakeKV so that its first write or deletion takes
// effect and then loses its reply (a dropped connection), and every later
// request is refused until heal: the client cannot tell that its request
// happened, and its retries fail.
type ambiguous struct {
	mu    sync.Mutex
	lost  bool
	stuck bool
}

func loseFirstReply(kv *fakeKV, refusal error) *ambiguous {
	a := &ambiguous{stuck: true}
	kv.applied = func(op kvapi.Op, keys []string) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.lost {
			return nil
		}
		a.lost = true
		return &kvapi.NetworkError{Op: op, Err: errors.New("connection reset after the request was sent")}
	}
	refuse := func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.lost && a.stuck {
			return refusal
		}
		return nil
	}
	kv.putErr = func(string) error { return refuse() }
	kv.bulkErr = func([]string) error { return refuse() }
	kv.deleteErr = func(string) error { return refuse() }
	return a
}

func (a *ambiguous) heal() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stuck = false
}

// perKeyLimit is the 429 Cloudflare answers a second write of a key within
// a second, such as a quick retry of a write that did happen.
var perKeyLimit = apiErr(429, 971)

// ambiguousCases are the ways a write goes out: streamed alone or in a bulk
// request with another key.
var ambiguousCases = []struct {
	name string
	bulk bool
}{{"single", false}, {"bulk", true}}

// A new key whose write took effect although its reply was lost, and whose
// retry was refused, is kvsync's: when its file goes, the key is deleted,
// whether the deletion comes from the watcher or from a later full sync.
func TestLostReplyNewKeyDeletedWithItsFile(t *testing.T) {
	for _, tc := range ambiguousCases {
		for _, via := range []string{"change", "full sync"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				tr := newTree(t)
				x := tr.write("x.txt", "written, reply lost")
				states := []desired.State{x}
				if tc.bulk {
					states = append(states, tr.write("keep.txt", "keep"))
				}
				kv := newFakeKV(t)
				store := newMemStore()
				a := loseFirstReply(kv, perKeyLimit)
				e, _ := newTestEngine(t, kv, store, func(o *Options) { o.RetryBackoff = time.Hour })
				rep, err := e.SyncOnce(context.Background(), complete(states...))
				if !errors.Is(err, ErrSyncIncomplete) || rep.Written != 0 || rep.Failed != len(states) {
					t.Fatalf("first sync = %+v, %v; want every key failed", rep, err)
				}
				if got := kv.count(kvapi.OpBulkPut) > 0; got != tc.bulk {
					t.Fatalf("bulk used = %v, want %v", got, tc.bulk)
				}
				mustContent(t, kv, x.Key, "written, reply lost") // the test's premise
				if rec, ok := store.record(x.Key); !ok || !rec.Pending {
					t.Fatalf("record of x after the lost reply = %+v, %v; want its intent mark", rec, ok)
				}
				if drain := e.Drain(context.Background()); drain != nil { // the retries are refused
					t.Fatal(drain)
				}
				if rec, ok := store.record(x.Key); !ok || !rec.Pending {
					t.Fatalf("record of x after refused retries = %+v, %v; want its intent mark", rec, ok)
				}

				deleted := tr.remove("x.txt")
				a.heal()
				e2, logs := newTestEngine(t, kv, store, nil)
				switch via {
				case "change":
					running(t, e2)
					e2.Changed([]desired.State{deleted})
					waitIdle(t, e2)
				default:
					// other.txt keeps the tree from looking unmounted.
					rest := append(states[1:], tr.write("other.txt", "o"))
					rep, err := e2.SyncOnce(context.Background(), complete(rest...))
					if err != nil || rep.Deleted != 1 {
						t.Fatalf("full sync after the file went = %+v, %v; want x deleted", rep, err)
					}
				}
				if _, ok := kv.get(x.Key); ok {
					t.Fatalf("KV keeps x, written by kvsync, although its file is gone\n%s", logs)
				}
				if _, ok := store.record(x.Key); ok {
					t.Fatal("x's record survived its deletion")
				}
				if tc.bulk && via == "full sync" {
					mustContent(t, kv, testPrefix+"keep.txt", "keep")
					if rec, _ := store.record(testPrefix + "keep.txt"); rec.Pending {
						t.Fatal("keep.txt, rewritten, is still marked pending")
					}
				}
			})
		}
	}
}

// A key recorded with content A whose write of B took effect although its
// reply was lost, and whose retries failed, holds B: when the file goes back
// to A, A is written again instead of being taken as unchanged.
func TestLostReplyRevertedFileRewritten(t *testing.T) {
	for _, tc := range ambiguousCases {
		for _, via := range []string{"change", "restart"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				tr := newTree(t)
				names := []string{"x.txt"}
				if tc.bulk {
					names = append(names, "y.txt")
				}
				write := func(content string) []desired.State {
					var sts []desired.State
					for _, n := range names {
						sts = append(sts, tr.write(n, content+" of "+n))
					}
					return sts
				}
				kv := newFakeKV(t)
				store := newMemStore()
				a := write("version A")
				e, _ := newTestEngine(t, kv, store, func(o *Options) { o.RetryBackoff = time.Hour })
				if _, err := e.SyncOnce(context.Background(), complete(a...)); err != nil {
					t.Fatal(err)
				}
				recA, _ := store.record(a[0].Key)

				lost := loseFirstReply(kv, apiErr(503, 10001))
				b := write("version B")
				rep, err := e.SyncOnce(context.Background(), complete(b...))
				if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != len(b) {
					t.Fatalf("sync of B = %+v, %v; want every key failed", rep, err)
				}
				if got := kv.count(kvapi.OpBulkPut) > 0; got != tc.bulk {
					t.Fatalf("bulk used = %v, want %v", got, tc.bulk)
				}
				for _, st := range b {
					mustContent(t, kv, st.Key, "version B of "+strings.TrimPrefix(st.Key, testPrefix))
					rec, ok := store.record(st.Key)
					if !ok || !rec.Pending {
						t.Fatalf("record of %s = %+v, %v; want A's marked pending", st.Key, rec, ok)
					}
				}
				if rec, _ := store.record(a[0].Key); rec.Hash != recA.Hash || !rec.Written.Equal(recA.Written) {
					t.Fatalf("the mark lost the last confirmed write: %+v, was %+v", rec, recA)
				}

				lost.heal()
				a = write("version A")
				writesBefore := kv.writes()
				switch via {
				case "change":
					// The failed keys wait for their retry; the change
					// replaces them.
					running(t, e)
					e.Changed(a)
					waitIdle(t, e)
				default:
					e2, _ := newTestEngine(t, kv, store, nil)
					rep, err := e2.SyncOnce(context.Background(), complete(a...))
					if err != nil || rep.Written != len(a) || rep.Unchanged != 0 {
						t.Fatalf("sync after reverting = %+v, %v; want every key rewritten", rep, err)
					}
				}
				if kv.writes() == writesBefore {
					t.Fatal("the reverted file was taken as unchanged")
				}
				for _, st := range a {
					mustContent(t, kv, st.Key, "version A of "+strings.TrimPrefix(st.Key, testPrefix))
					if rec, _ := store.record(st.Key); rec.Pending || rec.Hash != st.Hash {
						t.Fatalf("record of %s after the rewrite = %+v; want A's, clean", st.Key, rec)
					}
				}

				// Clean again: a restart on the unchanged tree writes nothing.
				writesBefore = kv.writes()
				e3, _ := newTestEngine(t, kv, store, nil)
				if rep, err := e3.SyncOnce(context.Background(), complete(a...)); err != nil || rep.Unchanged != len(a) || kv.writes() != writesBefore {
					t.Fatalf("restart on the unchanged tree = %+v, %v, %d writes", rep, err, kv.writes()-writesBefore)
				}
			})
		}
	}
}

// A deletion that took effect although its reply was lost leaves the key
// pending, so a file that comes back with the content last recorded is
// written again rather than taken as unchanged.
func TestLostDeleteReplyFileBackRewritten(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		for _, via := range []string{"change", "restart"} {
			t.Run(fmt.Sprintf("bulk=%v/%s", bulk, via), func(t *testing.T) {
				tr := newTree(t)
				names := []string{"x"}
				if bulk {
					names = append(names, "y")
				}
				other := tr.write("other", "o")
				sts := []desired.State{other}
				for _, n := range names {
					sts = append(sts, tr.write(n, "content of "+n))
				}
				kv := newFakeKV(t)
				store := newMemStore()
				e, _ := newTestEngine(t, kv, store, func(o *Options) { o.RetryBackoff = time.Hour })
				if _, err := e.SyncOnce(context.Background(), complete(sts...)); err != nil {
					t.Fatal(err)
				}
				lost := loseFirstReply(kv, apiErr(503, 10001))
				for _, n := range names {
					tr.remove(n)
				}
				rep, err := e.SyncOnce(context.Background(), complete(other))
				if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != len(names) {
					t.Fatalf("sync deleting %v = %+v, %v; want every deletion failed", names, rep, err)
				}
				if got := kv.count(kvapi.OpBulkDelete) > 0; got != bulk {
					t.Fatalf("bulk delete used = %v, want %v", got, bulk)
				}
				for _, st := range sts[1:] {
					if _, ok := kv.get(st.Key); ok {
						t.Fatalf("test premise: %s not deleted", st.Key)
					}
					if rec, ok := store.record(st.Key); !ok || !rec.Pending || rec.Hash != st.Hash {
						t.Fatalf("record of %s after the lost reply = %+v, %v; want it marked pending", st.Key, rec, ok)
					}
				}

				lost.heal()
				back := []desired.State{other}
				for _, n := range names {
					back = append(back, tr.write(n, "content of "+n))
				}
				switch via {
				case "change":
					// The failed deletions wait for their retry; the
					// change replaces them.
					running(t, e)
					e.Changed(back[1:])
					waitIdle(t, e)
				default:
					e2, _ := newTestEngine(t, kv, store, nil)
					if rep, err := e2.SyncOnce(context.Background(), complete(back...)); err != nil || rep.Written != len(names) {
						t.Fatalf("sync after the files came back = %+v, %v; want them rewritten", rep, err)
					}
				}
				for i, st := range back[1:] {
					mustContent(t, kv, st.Key, "content of "+names[i])
					if rec, _ := store.record(st.Key); rec.Pending {
						t.Fatalf("%s rewritten but still pending", st.Key)
					}
				}
			})
		}
	}
}

// The intent mark is in the store when the request is sent: every write and
// deletion finds its keys marked, a new key with a bare mark and a recorded
// one with its record kept.
func TestIntentMarkedBeforeSend(t *testing.T) {
	cases := []struct {
		name   string
		policy DeletePolicy
		op     kvapi.Op
		// run makes the engine send op; recorded is the key recorded
		// before it, if any.
		run func(t *testing.T, e *Engine, tr *tree, recorded desired.State)
		// recordedKey says whether op's keys were recorded before.
		recordedKey bool
	}{
		{"put new key", DeleteRemove, kvapi.OpPut, func(t *testing.T, e *Engine, tr *tree, _ desired.State) {
			e.Changed([]desired.State{tr.write("new", "n")})
		}, false},
		{"put recorded key", DeleteRemove, kvapi.OpPut, func(t *testing.T, e *Engine, tr *tree, _ desired.State) {
			e.Changed([]desired.State{tr.write("old", "changed")})
		}, true},
		{"bulk put", DeleteRemove, kvapi.OpBulkPut, func(t *testing.T, e *Engine, tr *tree, recorded desired.State) {
			if _, err := e.SyncOnce(context.Background(), complete(recorded, tr.write("new", "n"), tr.write("new2", "n2"))); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"delete", DeleteRemove, kvapi.OpDelete, func(t *testing.T, e *Engine, tr *tree, _ desired.State) {
			e.Changed([]desired.State{tr.remove("old")})
		}, true},
		{"bulk delete", DeleteRemove, kvapi.OpBulkDelete, func(t *testing.T, e *Engine, tr *tree, _ desired.State) {
			if _, err := e.SyncOnce(context.Background(), complete(tr.write("other", "o"))); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"expire rewrite", DeleteExpire, kvapi.OpPut, func(t *testing.T, e *Engine, tr *tree, _ desired.State) {
			e.Changed([]desired.State{tr.remove("old")})
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			kv := newFakeKV(t)
			store := newMemStore()
			recorded := []desired.State{tr.write("old", "o")}
			if tc.op == kvapi.OpBulkDelete {
				recorded = append(recorded, tr.write("old2", "o2"))
			}
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				o.Delete = tc.policy
				o.DeleteTTL = time.Hour
			})
			if _, err := e.SyncOnce(context.Background(), complete(recorded...)); err != nil {
				t.Fatal(err)
			}
			before, _ := store.record(recorded[0].Key)
			var mu sync.Mutex
			checked := 0
			kv.sent = func(op kvapi.Op, keys []string) {
				if op != tc.op {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				checked++
				for _, k := range keys {
					rec, ok := store.record(k)
					switch {
					case !ok || !rec.Pending:
						t.Errorf("%s of %s sent with record %+v, %v; want an intent mark", op, k, rec, ok)
					case k == recorded[0].Key && (rec.Hash != before.Hash || !rec.Written.Equal(before.Written)):
						t.Errorf("%s of %s: the mark %+v lost the record %+v", op, k, rec, before)
					case k != recorded[0].Key && !tc.recordedKey && rec.Hash != "":
						t.Errorf("%s of new key %s: mark %+v carries a hash", op, k, rec)
					}
				}
			}
			running(t, e)
			tc.run(t, e, tr, recorded[0])
			waitIdle(t, e)
			mu.Lock()
			defer mu.Unlock()
			if checked == 0 {
				t.Fatalf("no %s was sent (calls %v)", tc.op, kv.calls)
			}
		})
	}
}

// A dry run plans only: it stores no intent mark for writes or deletions,
// whichever path they take.
func TestDryRunWritesNoMarks(t *testing.T) {
	for _, policy := range []DeletePolicy{DeleteRemove, DeleteExpire} {
		t.Run(string(policy), func(t *testing.T) {
			tr := newTree(t)
			store := newMemStore()
			store.PutBatch(testScope, map[string]state.Record{
				testPrefix + "gone":    {Hash: "x"},
				testPrefix + "gone2":   {Hash: "y"},
				testPrefix + "changed": {Hash: "z"},
			})
			kv := newFakeKV(t)
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				o.DryRun = true
				o.Delete = policy
				o.DeleteTTL = time.Hour
				o.BulkMinPending = 2
			})
			states := []desired.State{tr.write("a", "a"), tr.write("b", "b"), tr.write("changed", "c")}
			if _, err := e.SyncOnce(context.Background(), complete(states...)); err != nil {
				t.Fatal(err)
			}
			running(t, e)
			e.Snapshot(complete(states...))
			e.Changed(append(states, desired.State{Key: testPrefix + "gone", Deleted: true}, desired.State{Key: testPrefix + "gone2", Deleted: true}))
			waitIdle(t, e)
			if n := kv.total(); n != 0 {
				t.Fatalf("%d calls in a dry run", n)
			}
			if store.puts != 1 || store.len() != 3 {
				t.Fatalf("store written %d times (%d records) in a dry run", store.puts-1, store.len())
			}
			store.ForEach(testScope, "", func(k string, r state.Record) error {
				if r.Pending {
					t.Errorf("dry run marked %s pending", k)
				}
				return nil
			})
		})
	}
}

// A write kvapi would refuse before sending anything (bad key, metadata
// that is no object) gets no mark: it cannot have changed KV, so it must
// not make the key kvsync's.
func TestNoMarkForLocallyRefusedWrite(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			tr := newTree(t)
			badMeta := tr.write("meta", "m")
			badMeta.Metadata = json.RawMessage(`[1, 2]`)
			long := tr.write("long", "l")
			long.Key = testPrefix + strings.Repeat("k", kvapi.MaxKeyBytes)
			states := []desired.State{badMeta, long}
			if bulk {
				states = append(states, tr.write("good", "g"), tr.write("good2", "g2"))
			}
			kv := newFakeKV(t)
			store := newMemStore()
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				if !bulk {
					o.BulkThreshold = -1
				}
			})
			rep, err := e.SyncOnce(context.Background(), complete(states...))
			if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != 2 || rep.Written != len(states)-2 {
				t.Fatalf("%+v, %v", rep, err)
			}
			for _, st := range states[:2] {
				if rec, ok := store.record(st.Key); ok {
					t.Errorf("refused write of %s left record %+v", st.Key, rec)
				}
				if _, ok := kv.get(st.Key); ok {
					t.Errorf("refused write of %s reached KV", st.Key)
				}
			}
			var ve *kvapi.ValidationError
			for _, f := range rep.Failures {
				if !errors.As(f.Err, &ve) || ve.Key != f.Key {
					t.Errorf("failure %s: %v; want a ValidationError naming the key", f.Key, f.Err)
				}
			}
			if bulk && kv.count(kvapi.OpBulkPut) != 1 {
				t.Errorf("bulk requests %d, want 1 with the valid pairs only", kv.count(kvapi.OpBulkPut))
			}
			if !bulk && kv.count(kvapi.OpPut) != 0 {
				t.Errorf("%d PUTs of refused writes", kv.count(kvapi.OpPut))
			}
		})
	}
}

// A mark that cannot be stored stops the request: sending it unrecorded
// could leave KV holding content kvsync does not know of. The key is
// retried later.
func TestUnrecordableIntentNotSent(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			tr := newTree(t)
			states := []desired.State{tr.write("a", "a")}
			if bulk {
				states = append(states, tr.write("b", "b"))
			}
			kv := newFakeKV(t)
			store := newMemStore()
			store.mu.Lock()
			store.putErr = errors.New("disk full")
			store.mu.Unlock()
			e, logs := newTestEngine(t, kv, store, func(o *Options) { o.RetryBackoff = time.Hour })
			rep, err := e.SyncOnce(context.Background(), complete(states...))
			if !errors.Is(err, ErrSyncIncomplete) || rep.Failed != len(states) {
				t.Fatalf("%+v, %v", rep, err)
			}
			if n := kv.writes(); n != 0 {
				t.Fatalf("%d requests sent without their intent recorded", n)
			}
			if !strings.Contains(logs.String(), "disk full") {
				t.Fatalf("log does not say why:\n%s", logs)
			}
			store.mu.Lock()
			store.putErr = nil
			store.mu.Unlock()
			running(t, e)
			if err := e.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, st := range states {
				if rec, ok := store.record(st.Key); !ok || rec.Pending {
					t.Fatalf("after the store recovered, %s: %+v, %v", st.Key, rec, ok)
				}
			}
		})
	}
}

// The expire policy rewrites a pending key with the metadata KV holds, not
// with the record's, which may predate a write whose reply was lost.
func TestExpirePendingKeepsMetadataInKV(t *testing.T) {
	kv := newFakeKV(t)
	store := newMemStore()
	key := testPrefix + "x"
	kv.mu.Lock()
	kv.data[key] = fakeEntry{value: []byte("B"), meta: json.RawMessage(`{"v":"B"}`)}
	kv.mu.Unlock()
	store.PutBatch(testScope, map[string]state.Record{key: {Hash: sha256Hex([]byte("A")), Metadata: json.RawMessage(`{"v":"A"}`), Pending: true}})
	e, _ := newTestEngine(t, kv, store, func(o *Options) {
		o.Delete = DeleteExpire
		o.DeleteTTL = time.Hour
	})
	running(t, e)
	e.Changed([]desired.State{{Key: key, Deleted: true}})
	waitIdle(t, e)
	got, ok := kv.get(key)
	if !ok || string(got.value) != "B" || string(got.meta) != `{"v":"B"}` || got.ttl != 3600 {
		t.Fatalf("KV after expiring a pending key: %+v, %v; want B with its metadata and ttl 3600", got, ok)
	}
	if _, ok := store.record(key); ok {
		t.Fatal("expired key still recorded")
	}
	if n := kv.count(kvapi.OpGetMetadata); n != 1 {
		t.Fatalf("%d metadata reads, want 1", n)
	}
}

// A write the API refused outright (a 4xx) was not applied, so it must not
// leave its key kvsync's: a key someone else wrote, which the refused write
// would have overwritten, is not deleted when the file goes, and a key
// kvsync wrote before keeps its old record, so a later comparison still
// sees what KV holds.
func TestRefusedWriteTakesItsMarkBack(t *testing.T) {
	for _, tc := range ambiguousCases {
		t.Run(tc.name+"/foreign key", func(t *testing.T) {
			tr := newTree(t)
			kv := newFakeKV(t)
			kv.set(testPrefix+"theirs", "someone else's")
			refuse := func(key string) error {
				if key == testPrefix+"theirs" {
					return apiErr(400, 10012)
				}
				return nil
			}
			kv.putErr = refuse
			kv.bulkErr = func(keys []string) error {
				for _, k := range keys {
					if err := refuse(k); err != nil {
						return err
					}
				}
				return nil
			}
			store := newMemStore()
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				o.RetryBackoff = time.Hour
				if !tc.bulk {
					o.BulkThreshold = -1
				}
			})
			states := []desired.State{tr.write("theirs", "mine")}
			if tc.bulk {
				states = append(states, tr.write("other", "x"))
			}
			if _, err := e.SyncOnce(context.Background(), complete(states...)); !errors.Is(err, ErrSyncIncomplete) {
				t.Fatalf("SyncOnce: %v, want the refusal reported", err)
			}
			if rec, ok := store.record(testPrefix + "theirs"); ok {
				t.Fatalf("a refused write left a record %+v", rec)
			}
			running(t, e)
			e.Changed([]desired.State{tr.remove("theirs")})
			waitIdle(t, e)
			if n := kv.count(kvapi.OpDelete, kvapi.OpBulkDelete); n != 0 {
				t.Fatalf("%d deletions sent for a key kvsync never wrote", n)
			}
			mustContent(t, kv, testPrefix+"theirs", "someone else's")
		})
		t.Run(tc.name+"/own key", func(t *testing.T) {
			tr := newTree(t)
			kv := newFakeKV(t)
			store := newMemStore()
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				o.RetryBackoff = time.Hour
				if !tc.bulk {
					o.BulkThreshold = -1
				}
			})
			if _, err := e.SyncOnce(context.Background(), complete(tr.write("a", "v1"))); err != nil {
				t.Fatal(err)
			}
			before, _ := store.record(testPrefix + "a")
			kv.putErr = func(string) error { return apiErr(413, 10011) }
			kv.bulkErr = func([]string) error { return apiErr(413, 10011) }
			if _, err := e.SyncOnce(context.Background(), complete(tr.write("a", "v2 is refused"))); !errors.Is(err, ErrSyncIncomplete) {
				t.Fatalf("SyncOnce: %v, want the refusal reported", err)
			}
			after, ok := store.record(testPrefix + "a")
			if !ok || after.Pending || after.Hash != before.Hash || !after.Written.Equal(before.Written) {
				t.Fatalf("record after the refused rewrite = %+v, %v; want the one before it, %+v", after, ok, before)
			}
			mustContent(t, kv, testPrefix+"a", "v1")
		})
	}
}
