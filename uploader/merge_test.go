package uploader

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
)

// walkOf is a streamed snapshot, as the watcher's Run and Stream hand
// over: the states in the order given, then complete and reason.
func walkOf(states []desired.State, complete bool, reason string) desired.Snapshot {
	return desired.Snapshot{Trigger: desired.TriggerManual, Walk: func(yield func(desired.State) bool) (bool, string) {
		for _, st := range states {
			if !yield(st) {
				return false, desired.ErrStopped.Error()
			}
		}
		return complete, reason
	}}
}

// The merge finds exactly the recorded keys no file maps to, across the
// store's read batches and where byte order and a directory's order
// differ ("a-b" < "a/x" < "a0"), whether the tree comes as States or
// streamed; an incomplete or unordered walk deletes nothing.
func TestMergeCandidates(t *testing.T) {
	recorded := []string{"a-b", "a/x", "a/y", "a0", "a.c", "b"}
	for i := range 2*storeBatch + 7 {
		recorded = append(recorded, fmt.Sprintf("m/%05d", i))
	}
	gone := map[string]bool{"a-b": true, "a/y": true, "b": true, "m/00000": true, "m/00512": true, "m/00513": true, fmt.Sprintf("m/%05d", 2*storeBatch+6): true}
	var tree []desired.State
	var wantGone []string
	for _, k := range recorded {
		if gone[k] {
			wantGone = append(wantGone, testPrefix+k)
			continue
		}
		tree = append(tree, desired.State{Key: testPrefix + k, Hash: "h", Size: 1})
	}
	tree = append(tree, desired.State{Key: testPrefix + "a/new", Hash: "n", Size: 1})
	slices.SortFunc(tree, func(a, b desired.State) int { return strings.Compare(a.Key, b.Key) })
	slices.Sort(wantGone)
	unordered := slices.Clone(tree)
	unordered[0], unordered[1] = unordered[1], unordered[0]
	shuffled := slices.Clone(tree)
	slices.Reverse(shuffled)

	tests := []struct {
		name    string
		snap    desired.Snapshot
		refused string // "" when wantGone is planned
	}{
		{"states", complete(tree...), ""},
		{"states out of order", complete(shuffled...), ""},
		{"streamed", walkOf(tree, true, ""), ""},
		{"streamed incomplete", walkOf(tree, false, "permission denied: /srv/m"), "snapshot incomplete (permission denied: /srv/m)"},
		{"streamed out of order", walkOf(unordered, true, ""), "did not come in byte order"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newMemStore()
			recs := map[string]state.Record{}
			for _, k := range recorded {
				recs[testPrefix+k] = state.Record{Hash: "h", Size: 1, Written: time.Unix(1, 0)}
			}
			recs["other/"+"z"] = state.Record{Hash: "h"} // outside the prefix
			if err := store.PutBatch(testScope, recs); err != nil {
				t.Fatal(err)
			}
			e, _ := newTestEngine(t, newFakeKV(t), store, func(o *Options) { o.DryRun = true })
			rep, err := e.Plan(context.Background(), tc.snap)
			if err != nil {
				t.Fatal(err)
			}
			if tc.refused != "" {
				if !strings.Contains(rep.DeletesRefused, tc.refused) || len(rep.WouldDelete) > 0 {
					t.Fatalf("refused %q, would delete %d; want refused %q", rep.DeletesRefused, len(rep.WouldDelete), tc.refused)
				}
				return
			}
			if rep.DeletesRefused != "" {
				t.Fatalf("deletes refused: %s", rep.DeletesRefused)
			}
			if !slices.Equal(rep.WouldDelete, wantGone) {
				t.Errorf("would delete %v, want %v", rep.WouldDelete, wantGone)
			}
			if want := []string{testPrefix + "a/new"}; !slices.Equal(rep.WouldWrite, want) {
				t.Errorf("would write %v, want %v", rep.WouldWrite, want)
			}
		})
	}
}

// A full sync fed a streamed walk deletes the keys whose files are gone
// once the walk ended complete, and nothing when it ended incomplete;
// the engine never holds the walk's states (it takes them one by one).
func TestStreamedPassDeletes(t *testing.T) {
	for _, whole := range []bool{true, false} {
		t.Run(fmt.Sprintf("complete=%v", whole), func(t *testing.T) {
			store, kv := seeded(t, 3)
			tr := newTree(t)
			e, _ := newTestEngine(t, kv, store, nil)
			keep := store.recs[testScope][testPrefix+"old1"]
			keepState := tr.write("old1", "old")
			keepState.Hash = keep.Hash
			rep, err := e.SyncOnce(context.Background(), walkOf([]desired.State{keepState, tr.write("z", "z")}, whole, "a directory vanished"))
			if whole {
				if err != nil {
					t.Fatal(err)
				}
				if rep.Deleted != 2 || rep.Incomplete != "" {
					t.Fatalf("deleted %d (incomplete %q), want old0 and old2", rep.Deleted, rep.Incomplete)
				}
				for _, k := range []string{"old0", "old2"} {
					if _, ok := kv.get(testPrefix + k); ok {
						t.Errorf("%s still in KV", k)
					}
				}
				return
			}
			if rep.Deleted != 0 || rep.Incomplete != "a directory vanished" || !strings.Contains(rep.DeletesRefused, "snapshot incomplete") {
				t.Fatalf("deleted %d, incomplete %q, refused %q; want nothing deleted from an incomplete walk", rep.Deleted, rep.Incomplete, rep.DeletesRefused)
			}
			if err == nil {
				t.Fatal("an incomplete walk's sync reported no error")
			}
			for _, k := range []string{"old0", "old2"} {
				if _, ok := kv.get(testPrefix + k); !ok {
					t.Errorf("%s deleted by an incomplete walk", k)
				}
			}
		})
	}
}

// versionedStore is a memStore that says when it was written, as
// *state.Store does, so a pass may use the records its merge read.
type versionedStore struct {
	*memStore
	version atomic.Uint64
}

func (s *versionedStore) Version() uint64 { return s.version.Load() }

func (s *versionedStore) PutBatch(scope string, recs map[string]state.Record) error {
	s.version.Add(1)
	defer s.version.Add(1)
	return s.memStore.PutBatch(scope, recs)
}

// The record the merge read for a key stands in for a read of the store
// only while nothing was written since: a record written between the
// merge and the offer is the one the offer sees.
func TestRecordOfCurrent(t *testing.T) {
	store := &versionedStore{memStore: newMemStore()}
	old := state.Record{Hash: "old", Size: 1}
	if err := store.PutBatch(testScope, map[string]state.Record{testPrefix + "a": old, testPrefix + "b": old}); err != nil {
		t.Fatal(err)
	}
	e, _ := newTestEngine(t, newFakeKV(t), store, nil)
	m := e.newMerge(nil)
	p := &pass{}

	p.merged = m.tree(testPrefix + "a")
	store.gets.Store(0)
	if rec, ok, err := e.recordOf(p, testPrefix+"a"); err != nil || !ok || rec.Hash != "old" {
		t.Fatalf("recordOf(a) = %+v %v %v, want the merged record", rec, ok, err)
	}
	if n := store.gets.Load(); n != 0 {
		t.Errorf("recordOf read the store %d times for a current merged record, want 0", n)
	}

	p.merged = m.tree(testPrefix + "b")
	if err := store.PutBatch(testScope, map[string]state.Record{testPrefix + "b": {Hash: "new", Size: 2}}); err != nil {
		t.Fatal(err)
	}
	if rec, ok, err := e.recordOf(p, testPrefix+"b"); err != nil || !ok || rec.Hash != "new" {
		t.Fatalf("recordOf(b) after a write = %+v %v %v, want the new record", rec, ok, err)
	}

	p.merged = m.tree(testPrefix + "c") // not in the store
	if _, ok, err := e.recordOf(p, testPrefix+"c"); err != nil || ok {
		t.Fatalf("recordOf(c) = %v %v, want no record", ok, err)
	}
}

// For telling drift, the merge's record serves even after a write: a key the
// listing lacks is compared with what the store said when it was merged,
// without a read of the store per file while the pass's own writes go on.
func TestDriftRecordOfMerged(t *testing.T) {
	store := &versionedStore{memStore: newMemStore()}
	old := state.Record{Hash: "old", Size: 1}
	if err := store.PutBatch(testScope, map[string]state.Record{testPrefix + "a": old}); err != nil {
		t.Fatal(err)
	}
	e, _ := newTestEngine(t, newFakeKV(t), store, nil)
	m := e.newMerge(nil)
	p := &pass{}
	for _, key := range []string{testPrefix + "a", testPrefix + "b"} {
		p.merged = m.tree(key)
		if err := store.PutBatch(testScope, map[string]state.Record{key: {Hash: "new", Size: 2}}); err != nil {
			t.Fatal(err)
		}
		store.gets.Store(0)
		rec, ok, err := e.driftRecordOf(p, key)
		if err != nil || ok != (key == testPrefix+"a") || ok && rec.Hash != "old" {
			t.Errorf("driftRecordOf(%s) = %+v %v %v, want the merged record (old for a, none for b)", key, rec, ok, err)
		}
		if n := store.gets.Load(); n != 0 {
			t.Errorf("driftRecordOf(%s) read the store %d times, want 0", key, n)
		}
	}
	// A key the merge did not take (another one's) is read from the store.
	if rec, ok, err := e.driftRecordOf(p, testPrefix+"a"); err != nil || !ok || rec.Hash != "new" {
		t.Errorf("driftRecordOf(a) while b is merged = %+v %v %v, want the store's new record", rec, ok, err)
	}
}

// While a streamed full sync runs, Recorded answers the scan from the
// pass's merge (no lookup per file), for keys present, absent and past
// the store's batches alike, and from the store otherwise.
func TestRecordedDuringWalk(t *testing.T) {
	store := newMemStore()
	recs := map[string]state.Record{}
	var keys []string
	for i := range storeBatch + 10 {
		k := fmt.Sprintf("%sf%05d", testPrefix, i)
		keys = append(keys, k)
		recs[k] = state.Record{Hash: "h" + k, Size: 1, Stamp: desired.Stamp{Ino: uint64(i + 1)}, Written: time.Unix(1, 0)}
	}
	recs[testPrefix+"f00003"] = state.Record{Pending: true} // no hash: not vouched for
	if err := store.PutBatch(testScope, recs); err != nil {
		t.Fatal(err)
	}
	e, _ := newTestEngine(t, newFakeKV(t), store, func(o *Options) { o.DryRun = true })
	if _, _, ok := e.Recorded(keys[1]); !ok {
		t.Fatal("Recorded outside a full sync found nothing")
	}
	walk := desired.Snapshot{Walk: func(yield func(desired.State) bool) (bool, string) {
		gets := int64(0)
		for i, k := range keys {
			before := store.gets.Load()
			stamp, hash, ok := e.Recorded(k)
			gets += store.gets.Load() - before
			switch {
			case i == 3 && ok:
				t.Errorf("Recorded(%s) vouched for a record without a hash", k)
			case i != 3 && (!ok || hash != "h"+k || stamp.Ino != uint64(i+1)):
				t.Errorf("Recorded(%s) = %+v %q %v", k, stamp, hash, ok)
			}
			if i%2 == 0 { // the others are gone before they are handed over
				if !yield(desired.State{Key: k, Hash: "x"}) {
					return false, ""
				}
			}
			// A file after it, with no record.
			before = store.gets.Load()
			if _, _, ok := e.Recorded(k + "-new"); ok {
				t.Errorf("Recorded(%s-new) found a record", k)
			}
			gets += store.gets.Load() - before
		}
		if n := gets; n != 0 {
			t.Errorf("the scan's Recorded read the store %d times, want 0", n)
		}
		return true, ""
	}}
	rep, err := e.Plan(context.Background(), walk)
	if err != nil {
		t.Fatal(err)
	}
	if want := (len(keys) + 1) / 2; len(rep.WouldDelete) != len(keys)-want {
		t.Errorf("would delete %d keys, want the %d never handed over", len(rep.WouldDelete), len(keys)-want)
	}
}

// A plan that trusts the store compares each file with the record its
// merge read on the way, not with a read of the store per file.
func TestPlanComparesWithMergedRecords(t *testing.T) {
	store := &versionedStore{memStore: newMemStore()}
	recs := map[string]state.Record{}
	var tree []desired.State
	for _, k := range []string{"a", "b/c", "b/d", "e"} {
		recs[testPrefix+k] = state.Record{Hash: "h", Size: 1, Written: time.Unix(1, 0)}
		tree = append(tree, desired.State{Key: testPrefix + k, Hash: "h", Size: 1})
	}
	tree = append(tree, desired.State{Key: testPrefix + "f", Hash: "n", Size: 1})
	if err := store.PutBatch(testScope, recs); err != nil {
		t.Fatal(err)
	}
	e, _ := newTestEngine(t, newFakeKV(t), store, func(o *Options) { o.DryRun = true })
	store.gets.Store(0)
	rep, err := e.Plan(context.Background(), walkOf(tree, true, ""))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unchanged != 4 || !slices.Equal(rep.WouldWrite, []string{testPrefix + "f"}) {
		t.Errorf("unchanged %d, would write %v; want 4 and only f", rep.Unchanged, rep.WouldWrite)
	}
	if n := store.gets.Load(); n != 0 {
		t.Errorf("the plan read the store %d times, want 0", n)
	}
}

// releasingStore counts the drops of its pages (*state.Store's ReleasePages).
type releasingStore struct {
	*memStore
	released atomic.Int64
}

func (s *releasingStore) ReleasePages() error { s.released.Add(1); return nil }

// A plan reads the whole store through its merge, as a full sync does, so
// it drops the store's pages from the process as a sync does: every
// releaseEvery files and at its end.
func TestPlanReleasesStorePages(t *testing.T) {
	store := &releasingStore{memStore: newMemStore()}
	e, _ := newTestEngine(t, newFakeKV(t), store, func(o *Options) { o.DryRun = true })
	tree := make([]desired.State, releaseEvery+1)
	for i := range tree {
		tree[i] = desired.State{Key: fmt.Sprintf("%sf%06d", testPrefix, i), Hash: "h", Size: 1}
	}
	if _, err := e.Plan(context.Background(), walkOf(tree, true, "")); err != nil {
		t.Fatal(err)
	}
	if n := store.released.Load(); n != 2 {
		t.Errorf("the plan of %d files dropped the store's pages %d times, want 2 (at %d files and at the end)", len(tree), n, releaseEvery)
	}
}
