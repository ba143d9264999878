package uploader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// unhashed is st as the watcher emits it when the hash is not needed
// (watcher.Options.NeedHash): no Hash.
func unhashed(st desired.State) desired.State {
	st.Hash = ""
	return st
}

// A state without a hash is always written, whatever the key's record
// says, and the record then holds the hash of the bytes sent, so the next
// hashed state of the same content is unchanged.
func TestUnhashedStateIsWritten(t *testing.T) {
	records := map[string]func(content string) *state.Record{
		"no record":              func(string) *state.Record { return nil },
		"record without hash":    func(c string) *state.Record { return &state.Record{Size: int64(len(c))} },
		"record of same content": func(c string) *state.Record { return &state.Record{Hash: sha256Hex([]byte(c)), Size: int64(len(c))} },
	}
	for name, rec := range records {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bulk=%v", name, bulk), func(t *testing.T) {
				tr := newTree(t)
				contents := map[string]string{"a.txt": "alpha", "b.txt": "bravo!"}
				var states []desired.State
				store := newMemStore()
				for rel, c := range contents {
					states = append(states, unhashed(tr.write(rel, c)))
					if r := rec(c); r != nil {
						if err := store.PutBatch(testScope, map[string]state.Record{testPrefix + rel: *r}); err != nil {
							t.Fatal(err)
						}
					}
				}
				kv := newFakeKV(t)
				e, _ := newTestEngine(t, kv, store, func(o *Options) {
					if !bulk {
						o.BulkThreshold = -1
					}
				})
				plan, err := e.Plan(context.Background(), complete(states...))
				if err != nil || len(plan.WouldWrite) != len(states) {
					t.Fatalf("plan %+v, %v; want every key written", plan, err)
				}
				rep, err := e.SyncOnce(context.Background(), complete(states...))
				if err != nil || rep.Written != len(states) || rep.Unchanged != 0 {
					t.Fatalf("%+v, %v", rep, err)
				}
				if got := kv.count(kvapi.OpBulkPut) > 0; got != bulk {
					t.Fatalf("bulk used = %v, want %v", got, bulk)
				}
				var hashed []desired.State
				for rel, c := range contents {
					mustContent(t, kv, testPrefix+rel, c)
					r, ok := store.record(testPrefix + rel)
					if want := sha256Hex([]byte(c)); !ok || r.Pending || r.Hash != want || r.Size != int64(len(c)) {
						t.Errorf("record of %s = %+v, %v; want hash %s of the bytes sent", rel, r, ok, want)
					}
					hashed = append(hashed, tr.state(rel))
				}
				rep, err = e.SyncOnce(context.Background(), complete(hashed...))
				if err != nil || rep.Unchanged != len(hashed) || rep.Written != 0 {
					t.Fatalf("hashed states after: %+v, %v; want all unchanged", rep, err)
				}
			})
		}
	}
}

// A state without a hash that failed permanently is tried again when the
// next one arrives: without hashes, nothing says its content is the same.
func TestUnhashedRejectedStateRetried(t *testing.T) {
	tr := newTree(t)
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
	e, _ := newTestEngine(t, kv, newMemStore(), nil)
	running(t, e)
	e.Changed([]desired.State{unhashed(tr.write("a", "too large, says the API"))})
	waitIdle(t, e)
	mu.Lock()
	refuse = false
	mu.Unlock()
	e.Changed([]desired.State{unhashed(tr.write("a", "fits"))})
	waitIdle(t, e)
	if got := kv.count(kvapi.OpPut); got != 2 {
		t.Fatalf("puts = %d, want 2", got)
	}
	mustContent(t, kv, testPrefix+"a", "fits")
}

// A file the watcher did not open (no hash) that cannot be read is held
// back before anything is marked or sent: the write job opens (streamed)
// or reads (bulk) it before the intent mark. Its mode is 0; as root, which
// reads files whatever their mode (CI runs as root), the open is failed
// with EACCES through Engine.openFault instead, so the engine's handling
// is tested either way.
func TestUnhashedUnreadableNotSent(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			tr := newTree(t)
			states := []desired.State{unhashed(tr.write("secret", "s")), unhashed(tr.write("ok", "o")), unhashed(tr.write("ok2", "o2"))}
			if err := os.Chmod(filepath.Join(tr.root, "secret"), 0); err != nil {
				t.Fatal(err)
			}
			kv := newFakeKV(t)
			store := newMemStore()
			e, _ := newTestEngine(t, kv, store, func(o *Options) {
				if !bulk {
					o.BulkThreshold = -1
				}
			})
			if os.Geteuid() == 0 {
				e.openFault = func(st desired.State) error {
					if st.Rel == "secret" {
						return &fs.PathError{Op: "open", Path: st.Path, Err: syscall.EACCES}
					}
					return nil
				}
			}
			rep, err := e.SyncOnce(context.Background(), complete(states...))
			if !errors.Is(err, ErrSyncIncomplete) || rep.HeldBack != 1 || rep.Failed != 0 || rep.Written != 2 {
				t.Fatalf("%+v, %v; want 2 written, 1 held back", rep, err)
			}
			if r, ok := store.record(testPrefix + "secret"); ok {
				t.Errorf("unreadable file left record %+v", r)
			}
			if _, ok := kv.get(testPrefix + "secret"); ok {
				t.Error("unreadable file reached KV")
			}
			if len(rep.Failures) != 1 || !rep.Failures[0].HeldBack || !errors.Is(rep.Failures[0].Err, os.ErrPermission) {
				t.Errorf("failures %+v; want the permission error, held back", rep.Failures)
			}
		})
	}
}
