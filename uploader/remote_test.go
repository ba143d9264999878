package uploader

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

var testOwner = kvrecord.OwnerOf(testNS, testPrefix)

// listedEngine is an engine that keeps records in metadata and lists at
// every full sync, as `kvsync sync` does; fresh says its store is new.
func listedEngine(t *testing.T, kv *fakeKV, st Store, fresh bool, mod func(*Options)) *Engine {
	t.Helper()
	e, _ := newTestEngine(t, kv, st, func(o *Options) {
		o.Owner, o.Reconcile = testOwner, fresh
		if mod != nil {
			mod(o)
		}
	})
	return e
}

// syncFresh runs one full sync of states with a new, empty store: a CI
// runner or a new pod.
func syncFresh(t *testing.T, kv *fakeKV, mod func(*Options), states ...desired.State) Report {
	t.Helper()
	e := listedEngine(t, kv, newMemStore(), true, mod)
	rep, err := e.SyncOnce(context.Background(), complete(states...))
	if err != nil {
		t.Fatalf("sync: %v (%+v)", err, rep)
	}
	return rep
}

// opCounts is the fake's write and delete requests, for comparing runs.
func opCounts(kv *fakeKV) [2]int {
	return [2]int{kv.writes(), kv.count(kvapi.OpDelete, kvapi.OpBulkDelete)}
}

// TestFreshStoreComparesWithListing: with no local state, a sync learns
// from the listing what is published: it writes only what changed and
// deletes the keys of removed files, which it knows from their records.
func TestFreshStoreComparesWithListing(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	a, b, c := tr.write("a.txt", "a"), tr.write("b.txt", "b"), tr.write("dir/c.txt", "c")
	c.Metadata = json.RawMessage(`{"x":1}`)
	if rep := syncFresh(t, kv, nil, a, b, c); rep.Written != 3 {
		t.Fatalf("first publish wrote %d, want 3", rep.Written)
	}
	ent, _ := kv.get(testPrefix + "dir/c.txt")
	user, m, ok := kvrecord.Split(ent.meta)
	if !ok || m.Owner != testOwner || string(user) != `{"x":1}` {
		t.Fatalf("written metadata %s: want the sidecar's plus this sync's record", ent.meta)
	}

	before := opCounts(kv)
	rep := syncFresh(t, kv, nil, a, b, c)
	if rep.Written != 0 || rep.Unchanged != 3 || opCounts(kv) != before {
		t.Fatalf("unchanged tree, fresh store: %+v, requests %v -> %v; want 0 written, 3 unchanged, no request but the listing", rep, before, opCounts(kv))
	}
	if rep.List.Owned != 3 || rep.List.Requests != 1 {
		t.Errorf("list info %+v, want 3 owned in 1 request", rep.List)
	}

	tr.remove("b.txt")
	c2 := tr.write("dir/c.txt", "c changed")
	c2.Metadata = c.Metadata
	rep = syncFresh(t, kv, nil, a, c2)
	if rep.Written != 1 || rep.Deleted != 1 || rep.Unchanged != 1 {
		t.Fatalf("after a change and a removal: %+v; want 1 written, 1 deleted, 1 unchanged", rep)
	}
	if _, ok := kv.get(testPrefix + "b.txt"); ok {
		t.Error("the removed file's key is still in KV")
	}
	mustContent(t, kv, testPrefix+"dir/c.txt", "c changed")

	// The metadata changing alone, or the expiration rule, is a change.
	c3 := c2
	c3.Metadata = json.RawMessage(`{"x":2}`)
	if rep := syncFresh(t, kv, nil, a, c3); rep.Written != 1 {
		t.Errorf("metadata changed: wrote %d, want 1", rep.Written)
	}
	a2 := a
	a2.Expiration = desired.Expiration{TTL: time.Hour}
	if rep := syncFresh(t, kv, nil, a2, c3); rep.Written != 1 {
		t.Errorf("expiration rule changed: wrote %d, want 1", rep.Written)
	}
}

// TestListedOwnership: which keys a listed sync may delete. It deletes
// only keys whose record says this sync wrote them, or, for keys an
// earlier kvsync wrote before records existed, that its store recorded.
func TestListedOwnership(t *testing.T) {
	other := kvrecord.OwnerOf(testNS, testPrefix+"sub/")
	mark := func(o kvrecord.Owner, expiring bool) json.RawMessage {
		return kvrecord.Add(json.RawMessage(`{"k":1}`), kvrecord.Mark{Owner: o, Expiring: expiring, Digest: kvrecord.DigestOf(sha256.Sum256(nil), nil, kvrecord.Rule{})})
	}
	tests := []struct {
		name       string
		meta       json.RawMessage
		recorded   bool // the store has a record of the key
		policy     DeletePolicy
		wantGone   bool
		wantKeeps  bool // the store keeps its record
		wantExpire bool // rewritten with delete_ttl and an expiring mark
	}{
		{name: "this sync's record", meta: mark(testOwner, false), wantGone: true},
		{name: "another tool's key", meta: json.RawMessage(`{"k":1}`)},
		{name: "no metadata at all", meta: nil},
		{name: "another sync's record (a longer prefix)", meta: mark(other, false)},
		{name: "another sync's record, recorded here once", meta: mark(other, false), recorded: true},
		{name: "written by an earlier kvsync, recorded", meta: json.RawMessage(`{"k":1}`), recorded: true, wantGone: true},
		{name: "already expiring", meta: mark(testOwner, true), policy: DeleteExpire},
		{name: "this sync's record, expire policy", meta: mark(testOwner, false), policy: DeleteExpire, wantExpire: true},
		{name: "this sync's record, keep policy", meta: mark(testOwner, false), policy: DeleteKeep},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := newFakeKV(t)
			tr := newTree(t)
			keep := tr.write("keep.txt", "k")
			key := testPrefix + "sub/gone.txt"
			kv.mu.Lock()
			kv.data[key] = fakeEntry{value: []byte("old"), meta: tc.meta}
			kv.mu.Unlock()
			st := newMemStore()
			if tc.recorded {
				st.PutBatch(testScope, map[string]state.Record{key: {Hash: sha256Hex([]byte("old")), Metadata: json.RawMessage(`{"k":1}`)}})
			}
			e := listedEngine(t, kv, st, !tc.recorded, func(o *Options) {
				o.Delete = tc.policy
				o.DeleteTTL = time.Hour
			})
			if _, err := e.SyncOnce(context.Background(), complete(keep)); err != nil {
				t.Fatal(err)
			}
			ent, present := kv.get(key)
			switch {
			case tc.wantGone && present:
				t.Errorf("key kept (metadata %s), want it deleted", ent.meta)
			case tc.wantExpire:
				_, m, ok := kvrecord.Split(ent.meta)
				if !present || ent.ttl != 3600 || !ok || !m.Expiring || m.Owner != testOwner {
					t.Errorf("key %v ttl %d metadata %s; want it rewritten to expire in an hour, marked expiring", present, ent.ttl, ent.meta)
				}
				// The next sync, with no store, leaves it to expire.
				before := opCounts(kv)
				syncFresh(t, kv, func(o *Options) { o.Delete, o.DeleteTTL = DeleteExpire, time.Hour }, keep)
				if opCounts(kv) != before {
					t.Errorf("an expiring key was handled again: requests %v -> %v", before, opCounts(kv))
				}
			case !tc.wantGone && (!present || string(ent.meta) != string(tc.meta)):
				t.Errorf("key present %v with metadata %s, want it untouched (%s)", present, ent.meta, tc.meta)
			}
			if _, ok := st.record(key); tc.recorded && ok != tc.wantKeeps {
				t.Errorf("store record kept: %v, want %v", ok, tc.wantKeeps)
			}
		})
	}
}

// TestListedDeleteSafety: the guarantees hold when only the listing knows
// what this sync wrote: an empty tree deletes nothing, max_deletes holds,
// and nothing is deleted while a write failed.
func TestListedDeleteSafety(t *testing.T) {
	setup := func(t *testing.T) (*fakeKV, *tree, []desired.State) {
		kv := newFakeKV(t)
		tr := newTree(t)
		var sts []desired.State
		for _, n := range []string{"a", "b", "c", "d"} {
			sts = append(sts, tr.write(n+".txt", n))
		}
		syncFresh(t, kv, nil, sts...)
		return kv, tr, sts
	}
	t.Run("empty tree", func(t *testing.T) {
		kv, _, _ := setup(t)
		e := listedEngine(t, kv, newMemStore(), true, nil)
		rep, err := e.SyncOnce(context.Background(), complete())
		if err == nil || !strings.Contains(rep.DeletesRefused, "the tree has no files but 4 keys") || len(kv.data) != 4 {
			t.Fatalf("empty tree: err %v, refused %q, %d keys left; want refusal, 4 keys", err, rep.DeletesRefused, len(kv.data))
		}
	})
	t.Run("max_deletes", func(t *testing.T) {
		kv, _, sts := setup(t)
		e := listedEngine(t, kv, newMemStore(), true, func(o *Options) { o.MaxDeletes = 2 })
		rep, _ := e.SyncOnce(context.Background(), complete(sts[0]))
		if !strings.Contains(rep.DeletesRefused, "more than max_deletes=2") || len(kv.data) != 4 {
			t.Fatalf("3 deletions over max_deletes=2: refused %q, %d keys left; want refusal, 4 keys", rep.DeletesRefused, len(kv.data))
		}
	})
	t.Run("a write failed", func(t *testing.T) {
		kv, tr, sts := setup(t)
		changed := tr.write("a.txt", "a2")
		kv.putErr = func(string) error { return apiErr(400, 10001) }
		kv.bulkErr = func([]string) error { return apiErr(400, 10001) }
		e := listedEngine(t, kv, newMemStore(), true, func(o *Options) { o.BulkThreshold = -1 })
		rep, _ := e.SyncOnce(context.Background(), complete(changed, sts[1]))
		if rep.Failed != 1 || rep.Deleted != 0 || len(kv.data) != 4 {
			t.Fatalf("%+v, %d keys left; want 1 failed, nothing deleted", rep, len(kv.data))
		}
	})
}

// TestDriftRestored: with its store present, a listed sync finds keys
// deleted or overwritten behind its back and writes them again, counting
// them; a sync that trusts its store does not look.
func TestDriftRestored(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	a, b, c, d := tr.write("a", "a"), tr.write("b", "b"), tr.write("c", "c"), tr.write("d", "d")
	st := newMemStore()
	e := listedEngine(t, kv, st, true, nil)
	if _, err := e.SyncOnce(context.Background(), complete(a, b, c, d)); err != nil {
		t.Fatal(err)
	}
	aMeta := kv.data[testPrefix+"a"].meta
	kv.mu.Lock()
	delete(kv.data, testPrefix+"a")                                                    // deleted
	kv.data[testPrefix+"b"] = fakeEntry{value: []byte("by hand")}                      // overwritten by another tool
	kv.data[testPrefix+"c"] = fakeEntry{value: []byte("a"), meta: aMeta}               // another key's content and record copied in
	kv.data[testPrefix+"d"] = fakeEntry{value: []byte("d"), meta: mustMeta(t, "sub/")} // another sync's record
	kv.mu.Unlock()

	trusting := listedEngine(t, kv, st, false, func(o *Options) { o.ListInterval = -1 })
	if rep, _ := trusting.SyncOnce(context.Background(), complete(a, b, c, d)); rep.Written != 0 {
		t.Fatalf("trusting the store wrote %d, want 0 (it does not look)", rep.Written)
	}

	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test").Sync("test")
	listing := listedEngine(t, kv, st, false, func(o *Options) { o.Metrics = m })
	rep, err := listing.SyncOnce(context.Background(), complete(a, b, c, d))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Written != 4 || rep.Drift != 4 {
		t.Fatalf("%+v; want the 4 drifted keys written again and counted", rep)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		mustContent(t, kv, testPrefix+k, k)
	}
	for kind, want := range map[metrics.DriftKind]float64{metrics.DriftMissing: 1, metrics.DriftUnmarked: 1, metrics.DriftOverwritten: 2} {
		if got := testutil.ToFloat64(m.DriftKeys.WithLabelValues(string(kind))); got != want {
			t.Errorf("kvsync_drift_keys_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}
}

func mustMeta(t *testing.T, prefix string) json.RawMessage {
	t.Helper()
	return kvrecord.Add(nil, kvrecord.Mark{Owner: kvrecord.OwnerOf(testNS, testPrefix+prefix)})
}

// TestStaleListingHeals: a listing that lags the writes (KV's lasts up to
// about a minute) delays a deletion and causes a redundant write, and a
// later listing heals both: no key is lost track of. A single manifest
// rewritten from the stale read would have forgotten the new key for good.
func TestStaleListingHeals(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	a := tr.write("a", "a1")
	syncFresh(t, kv, nil, a)
	kv.freeze() // from here listings show only a, holding a1

	// A run whose store is then lost: it changes a and adds n.
	a = tr.write("a", "a2")
	n := tr.write("n", "new")
	if rep := syncFresh(t, kv, nil, a, n); rep.Written != 2 {
		t.Fatalf("run 2 wrote %d, want 2", rep.Written)
	}
	// n's file goes away; the listing still lags.
	tr.remove("n")
	rep := syncFresh(t, kv, nil, a)
	if rep.Written != 1 || rep.Deleted != 0 {
		t.Fatalf("stale listing: %+v; want a written again (redundant) and n not deleted yet (unknown)", rep)
	}
	if _, ok := kv.get(testPrefix + "n"); !ok {
		t.Fatal("n was deleted although no listing showed it")
	}
	kv.thaw()
	rep = syncFresh(t, kv, nil, a)
	if rep.Written != 0 || rep.Deleted != 1 {
		t.Fatalf("listing caught up: %+v; want nothing written and n deleted", rep)
	}
	if keys := slices.Sorted(mapsKeys(kv)); !slices.Equal(keys, []string{testPrefix + "a"}) {
		t.Fatalf("KV holds %q, want only %sa", keys, testPrefix)
	}
}

func mapsKeys(kv *fakeKV) func(func(string) bool) {
	kv.mu.Lock()
	keys := make([]string, 0, len(kv.data))
	for k := range kv.data {
		keys = append(keys, k)
	}
	kv.mu.Unlock()
	return slices.Values(keys)
}

// TestTwoPrefixesOneNamespace: two syncs whose prefixes nest share a
// namespace; each lists the other's keys and leaves them alone.
func TestTwoPrefixesOneNamespace(t *testing.T) {
	kv := newFakeKV(t)
	trA, trB := newTree(t), newTree(t)
	a := trA.write("x.txt", "a")
	b := trB.write("x.txt", "b")
	b.Key = testPrefix + "sub/x.txt"
	inner := func(o *Options) { o.Prefix, o.Owner = testPrefix+"sub/", kvrecord.OwnerOf(testNS, testPrefix+"sub/") }
	syncFresh(t, kv, nil, a)
	syncFresh(t, kv, inner, b)
	// The outer sync's tree has no sub/: its key there is not its own.
	rep := syncFresh(t, kv, nil, a)
	if rep.Deleted != 0 {
		t.Fatalf("outer sync deleted %d keys of the inner one", rep.Deleted)
	}
	rep = syncFresh(t, kv, inner, b)
	if rep.Deleted != 0 || rep.Written != 0 {
		t.Fatalf("inner sync: %+v; want nothing to do", rep)
	}
	mustContent(t, kv, testPrefix+"x.txt", "a")
	mustContent(t, kv, testPrefix+"sub/x.txt", "b")
}

// TestStreamedWriteMarksWhatWasSent: a file over the bulk threshold goes
// out as one streamed PUT whose record vouches for exactly its bytes, even
// when the scan did not hash it.
func TestStreamedWriteMarksWhatWasSent(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	big := tr.write("big.bin", strings.Repeat("z", 4096))
	unhashed := big
	unhashed.Hash = ""
	syncFresh(t, kv, func(o *Options) { o.BulkThreshold = -1 }, unhashed)
	ent, _ := kv.get(testPrefix + "big.bin")
	_, m, ok := kvrecord.Split(ent.meta)
	want := kvrecord.DigestOf(sha256.Sum256(ent.value), nil, kvrecord.Rule{})
	if !ok || m.Digest != want {
		t.Fatalf("streamed write's record %s does not vouch for the bytes sent", ent.meta)
	}
	if rep := syncFresh(t, kv, nil, big); rep.Written != 0 {
		t.Errorf("re-sync of the same file wrote %d, want 0", rep.Written)
	}
}

// TestHeldBackKeyStaysOurs: a daemon that starts with an empty store
// learns from the listing that a key is its own; the key's file is held
// back then (an invalid sidecar) and deleted later, between listings. The
// deletion, which the daemon compares with its store alone, must still
// find the key its own.
func TestHeldBackKeyStaysOurs(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	h := tr.write("held.txt", "h")
	syncFresh(t, kv, nil, h)
	e := listedEngine(t, kv, newMemStore(), true, func(o *Options) { o.ListInterval = time.Hour })
	held := h
	held.Err = errors.New("invalid metadata sidecar")
	rep, _ := e.SyncOnce(context.Background(), complete(held))
	if rep.HeldBack != 1 {
		t.Fatalf("%+v, want the file held back", rep)
	}
	running(t, e)
	e.Changed([]desired.State{tr.remove("held.txt")})
	waitIdle(t, e)
	if _, ok := kv.get(testPrefix + "held.txt"); ok {
		t.Fatal("the key of a file deleted after it was held back is still in KV")
	}
}

// TestListInterval: the daemon's full syncs list the namespace once
// list_interval has passed since the last listing (or since start, when
// its store is present), and at its first full sync when the store is
// fresh; a sync that trusts its store lists only when the store is fresh.
func TestListInterval(t *testing.T) {
	tr := newTree(t)
	a := tr.write("a", "a")
	tests := []struct {
		name     string
		fresh    bool
		interval time.Duration
		// at are the clock offsets of successive full syncs; want their
		// listings, cumulatively.
		at   []time.Duration
		want []int
	}{
		{"store present", false, time.Hour, []time.Duration{0, 59 * time.Minute, time.Hour, time.Hour + time.Minute, 2 * time.Hour}, []int{0, 0, 1, 1, 2}},
		{"store fresh", true, time.Hour, []time.Duration{0, time.Minute, time.Hour}, []int{1, 1, 2}},
		{"every full sync", false, 0, []time.Duration{0, 0, 0}, []int{1, 2, 3}},
		{"trust the store", false, -1, []time.Duration{0, 24 * time.Hour}, []int{0, 0}},
		{"trust a fresh store", true, -1, []time.Duration{0, 24 * time.Hour}, []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := newFakeKV(t)
			start := time.Unix(1_800_000_000, 0)
			now := start
			e := listedEngine(t, kv, newMemStore(), tc.fresh, func(o *Options) {
				o.ListInterval = tc.interval
				o.Now = func() time.Time { return now }
			})
			for i, off := range tc.at {
				now = start.Add(off)
				if _, err := e.SyncOnce(context.Background(), complete(a)); err != nil {
					t.Fatal(err)
				}
				if got := kv.count(kvapi.OpList); got != tc.want[i] {
					t.Fatalf("after the full sync at +%s: %d listings, want %d", off, got, tc.want[i])
				}
			}
		})
	}
}

// TestListedKeysComparedLater: a pod starts with an empty store before its
// app has written the files (an empty tree: nothing is deleted). The
// listing's records are kept, so when the app writes the same files, the
// daemon compares them with what KV holds and writes nothing.
func TestListedKeysComparedLater(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	a := tr.write("a.txt", "a")
	a.Metadata = json.RawMessage(`{"k":1}`)
	syncFresh(t, kv, nil, a)
	before := opCounts(kv)

	e := listedEngine(t, kv, newMemStore(), true, func(o *Options) { o.ListInterval = time.Hour })
	rep, _ := e.SyncOnce(context.Background(), complete())
	if !strings.Contains(rep.DeletesRefused, "the tree has no files") {
		t.Fatalf("empty tree: %+v, want deletions refused", rep)
	}
	running(t, e)
	e.Changed([]desired.State{a})
	changed := tr.write("b.txt", "b")
	e.Changed([]desired.State{changed})
	waitIdle(t, e)
	if got := opCounts(kv); got[0] != before[0]+1 || got[1] != before[1] {
		t.Fatalf("requests %v -> %v; want one write (b.txt) and a.txt, unchanged, left alone", before, got)
	}
}

// TestIncompleteListedPassKeepsTrack: the first full sync of a daemon with
// an empty store lists the namespace, but part of its tree cannot be read,
// so it deletes nothing. The keys the listing showed as this sync's are
// still recorded, and the next whole snapshot, with no listing, deletes the
// one whose file is gone.
func TestIncompleteListedPassKeepsTrack(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	a, gone := tr.write("a", "a"), tr.write("gone", "g")
	syncFresh(t, kv, nil, a, gone)
	tr.remove("gone")
	e := listedEngine(t, kv, newMemStore(), true, func(o *Options) { o.ListInterval = time.Hour })
	partial := complete(a)
	partial.Complete, partial.Reason = false, "a directory could not be read"
	rep, _ := e.SyncOnce(context.Background(), partial)
	if rep.Deleted != 0 || !strings.Contains(rep.DeletesRefused, "snapshot incomplete") {
		t.Fatalf("incomplete snapshot: %+v; want nothing deleted", rep)
	}
	rep, err := e.SyncOnce(context.Background(), complete(a))
	if err != nil || rep.Deleted != 1 || kv.count(kvapi.OpList) != 2 {
		t.Fatalf("next full sync: %+v, %v, %d listings; want gone deleted without listing again", rep, err, kv.count(kvapi.OpList))
	}
	if _, ok := kv.get(testPrefix + "gone"); ok {
		t.Fatal("the removed file's key is still in KV")
	}
}

// TestVanishedKeyStaysOurs: a new daemon's listing shows a key as this
// sync's with other content than its file now has; the file vanishes
// before it is sent, and its deletion comes as an event, which the daemon
// compares with its store alone. The key must still be found its own.
func TestVanishedKeyStaysOurs(t *testing.T) {
	kv := newFakeKV(t)
	tr := newTree(t)
	syncFresh(t, kv, nil, tr.write("v.txt", "old"))
	changed := tr.write("v.txt", "new")
	e := listedEngine(t, kv, newMemStore(), true, func(o *Options) { o.ListInterval = time.Hour })
	e.beforeRead = func([]desired.State) { os.Remove(filepath.Join(tr.root, "v.txt")) }
	if _, err := e.SyncOnce(context.Background(), complete(changed)); err != nil {
		t.Logf("sync with the file vanishing: %v", err)
	}
	e.beforeRead = nil
	running(t, e)
	e.Changed([]desired.State{{Key: testPrefix + "v.txt", Deleted: true}})
	waitIdle(t, e)
	if _, ok := kv.get(testPrefix + "v.txt"); ok {
		t.Fatal("the key of a file that vanished before it was sent is still in KV after its deletion")
	}
}
