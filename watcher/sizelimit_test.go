package watcher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
)

// TestSizeLimitEdge: a file of exactly the limit is published and one byte
// more is held back, at the default limit (KV's 25 MiB) and a configured one.
// The files are sparse, so the 25 MiB ones cost no disk.
func TestSizeLimitEdge(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name  string
		limit int64 // 0: the default
		at    int64 // the largest size published
	}{
		{"default is 25 MiB", 0, 25 * mib},
		{"configured", 1000, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, size := range map[string]int64{"at": tc.at, "over": tc.at + 1, "under": tc.at - 1} {
				f, err := os.Create(filepath.Join(root, name))
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Truncate(size); err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			opts := testOpts(t, root)
			opts.MaxFileSize = tc.limit
			w, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]desired.State{}
			for _, st := range snap.States {
				got[st.Key] = st
			}
			for _, k := range []string{"under", "at"} {
				if st, ok := got[k]; !ok || st.Err != nil || st.Hash == "" {
					t.Errorf("%s (%d bytes): %+v, want it published with its hash", k, st.Size, st.Err)
				}
			}
			if st := got["over"]; !errors.Is(st.Err, ErrTooLarge) {
				t.Errorf("over (%d bytes): err %v, want ErrTooLarge", tc.at+1, st.Err)
			}
		})
	}
}
