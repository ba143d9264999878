//go:build linux

package watcher

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
)

// TestRecordedStampSkipsRead: a new watcher (a new process) whose sink
// recorded each key's stamp and hash opens no file of an unchanged tree;
// it reads again exactly the files whose stat changed, content or not.
func TestRecordedStampSkipsRead(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"a.txt", "b.txt", "dir/c.txt"} {
		write(t, root, n, "content of "+n)
	}
	later := time.Now().Add(time.Hour) // every file's times are settled
	scan := func(recorded map[string]desired.State) (map[string]desired.State, []string) {
		t.Helper()
		opened := &countingOpen{}
		opts := Options{Root: root, Now: func() time.Time { return later }}
		if recorded != nil {
			opts.Recorded = func(key string) (desired.Stamp, string, bool) {
				st, ok := recorded[key]
				return st.Stamp, st.Hash, ok
			}
		}
		w, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		w.open = opened.open
		snap, err := w.Scan(context.Background(), desired.TriggerStartup)
		if err != nil || !snap.Complete {
			t.Fatalf("scan: %v", err)
		}
		out := map[string]desired.State{}
		for _, st := range snap.States {
			out[st.Key] = st
		}
		var names []string
		for _, n := range opened.names {
			rel, _ := filepath.Rel(root, n)
			names = append(names, filepath.ToSlash(rel))
		}
		sort.Strings(names)
		return out, names
	}

	first, opened := scan(nil)
	if len(opened) != 3 {
		t.Fatalf("first scan opened %q, want every file", opened)
	}
	for k, st := range first {
		if st.Stamp.IsZero() || st.Hash == "" {
			t.Fatalf("%s: no stamp or hash after a read of a settled file: %+v", k, st)
		}
	}
	again, opened := scan(first)
	if len(opened) != 0 {
		t.Fatalf("a new watcher with the recorded stamps opened %q, want none", opened)
	}
	for k, st := range again {
		if st.Hash != first[k].Hash || st.Stamp != first[k].Stamp {
			t.Errorf("%s: %+v, want the recorded hash and stamp", k, st)
		}
	}

	// A rewrite with other content, and a touch that keeps it: both
	// change the stat, so both are read again.
	write(t, root, "a.txt", "new content")
	if err := os.Chtimes(filepath.Join(root, "b.txt"), time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	third, opened := scan(first)
	if want := []string{"a.txt", "b.txt"}; len(opened) != 2 || opened[0] != want[0] || opened[1] != want[1] {
		t.Fatalf("opened %q after a rewrite and a touch, want %q", opened, want)
	}
	if third["a.txt"].Hash == first["a.txt"].Hash || third["b.txt"].Hash != first["b.txt"].Hash {
		t.Errorf("hashes after the rewrite and the touch: a %v b %v", third["a.txt"].Hash != first["a.txt"].Hash, third["b.txt"].Hash == first["b.txt"].Hash)
	}

	// A forged record under the current stamp is believed: proof that the
	// hash came from the record, not from a read.
	forged := map[string]desired.State{}
	for k, st := range third {
		st.Hash = "recorded"
		forged[k] = st
	}
	got, opened := scan(forged)
	if len(opened) != 0 || got["dir/c.txt"].Hash != "recorded" {
		t.Fatalf("opened %q, hash %q; want no read and the recorded hash", opened, got["dir/c.txt"].Hash)
	}
}
