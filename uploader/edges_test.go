package uploader

import (
	"context"
	"fmt"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
)

// TestMaxDeletesEdge: a full sync deletes exactly max_deletes keys, and
// refuses one more. The cap is inclusive, like rclone's --max-delete.
func TestMaxDeletesEdge(t *testing.T) {
	const limit = 3
	for _, tc := range []struct {
		gone        int
		wantDeleted int
	}{
		{gone: limit - 1, wantDeleted: limit - 1},
		{gone: limit, wantDeleted: limit},
		{gone: limit + 1, wantDeleted: 0},
	} {
		t.Run(fmt.Sprintf("%d gone", tc.gone), func(t *testing.T) {
			store, kv := seeded(t, tc.gone)
			e, _ := newTestEngine(t, kv, store, func(o *Options) { o.MaxDeletes = limit })
			rep, err := e.SyncOnce(context.Background(), complete(newTree(t).write("new", "n")))
			if tc.wantDeleted == 0 && err == nil {
				t.Fatal("SyncOnce refused nothing")
			}
			if tc.wantDeleted > 0 && err != nil {
				t.Fatalf("SyncOnce: %v (refused: %s)", err, rep.DeletesRefused)
			}
			if rep.Deleted != tc.wantDeleted {
				t.Errorf("deleted %d, want %d (refused: %q)", rep.Deleted, tc.wantDeleted, rep.DeletesRefused)
			}
			for i := range tc.gone {
				k := fmt.Sprintf("%sold%d", testPrefix, i)
				if _, ok := kv.get(k); ok == (tc.wantDeleted > 0) {
					t.Errorf("key %s present = %v", k, ok)
				}
			}
		})
	}
}

// TestWorkerDeleteGuard: the worker checks ownership itself, whatever the
// queue decided: a deletion reaching it for a key with no record (another
// tool's, or one whose record went since it was queued) sends nothing,
// alone or in a bulk job beside keys kvsync did write.
func TestWorkerDeleteGuard(t *testing.T) {
	foreign := testPrefix + "foreign"
	t.Run("alone", func(t *testing.T) {
		store, kv := seeded(t, 1)
		e, _ := newTestEngine(t, kv, store, nil)
		r := e.deleteOne(context.Background(), &item{st: desired.State{Key: foreign, Deleted: true}})
		if r.out.kind != outNotOurs {
			t.Errorf("outcome %v, want outNotOurs", r.out.kind)
		}
		if n := kv.count(kvapi.OpDelete, kvapi.OpBulkDelete); n != 0 {
			t.Fatalf("%d delete requests for a key kvsync never wrote", n)
		}
		mustContent(t, kv, foreign, "not ours")
	})
	t.Run("in a bulk job", func(t *testing.T) {
		store, kv := seeded(t, 2)
		e, _ := newTestEngine(t, kv, store, nil)
		items := []*item{
			{st: desired.State{Key: testPrefix + "old0", Deleted: true}},
			{st: desired.State{Key: foreign, Deleted: true}},
			{st: desired.State{Key: testPrefix + "old1", Deleted: true}},
		}
		rs := e.deleteBulk(context.Background(), items)
		kinds := map[string]outKind{}
		for _, r := range rs {
			kinds[r.it.st.Key] = r.out.kind
		}
		if kinds[foreign] != outNotOurs || kinds[testPrefix+"old0"] != outDeleted || kinds[testPrefix+"old1"] != outDeleted {
			t.Errorf("outcomes %v", kinds)
		}
		mustContent(t, kv, foreign, "not ours")
		for _, k := range []string{"old0", "old1"} {
			if _, ok := kv.get(testPrefix + k); ok {
				t.Errorf("%s not deleted", k)
			}
		}
	})
}
