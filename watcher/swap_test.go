package watcher

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/testkit"
)

// secretOutside is what a file outside the root holds: a stand-in for
// kvsync's own API token. Every decoy has the size of the file it
// replaces, so no length check can tell them apart.
const secretOutside = "SECRET-TOKEN-0123"

// TestScanSwapAfterListing: between a directory's listing (which lstats
// its entries) and the reads that follow, a file, a sidecar or a
// subdirectory is swapped for a symlink to a secret outside the root. The
// scan reads nothing from outside: no hash of the secret, no metadata of
// it, no key below the swapped directory. The swaps happen in listHook,
// after the stat: no timing is involved.
func TestScanSwapAfterListing(t *testing.T) {
	// Not parallel: it switches the resolver of the whole process.
	testkit.Resolvers(t, testScanSwapAfterListing)
}

func testScanSwapAfterListing(t *testing.T) {
	for _, tc := range []struct {
		name string
		// swap changes root (outside holds the secrets) once the
		// directory at rel is listed and statted.
		dir  string
		swap func(t *testing.T, root, outside string)
		// want lists the keys the scan may emit, and how: "" for a file
		// published with its own content, "held" for a held-back state,
		// "read?" for a file held back when the scan reads it (hashed)
		// and emitted unread otherwise, for the sink's own checked read.
		want map[string]string
	}{
		{
			name: "file for a symlink", dir: "",
			swap: func(t *testing.T, root, outside string) {
				mustSwap(t, filepath.Join(outside, "top.txt"), filepath.Join(root, "top.txt"))
			},
			want: map[string]string{"top.txt": "read?", "sub/f.txt": ""},
		},
		{
			name: "sidecar for a symlink", dir: "",
			swap: func(t *testing.T, root, outside string) {
				mustSwap(t, filepath.Join(outside, "secret.json"), filepath.Join(root, "top.txt.meta.json"))
			},
			want: map[string]string{"top.txt": "held", "sub/f.txt": ""},
		},
		{
			name: "directory for a symlink", dir: "",
			swap: func(t *testing.T, root, outside string) {
				if err := os.Rename(filepath.Join(root, "sub"), filepath.Join(root, ".s")); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(outside, filepath.Join(root, "sub")); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]string{"top.txt": ""},
		},
		{
			name: "file in a subdirectory for a symlink", dir: "sub",
			swap: func(t *testing.T, root, outside string) {
				mustSwap(t, filepath.Join(outside, "f.txt"), filepath.Join(root, "sub", "f.txt"))
			},
			want: map[string]string{"top.txt": "", "sub/f.txt": "read?"},
		},
	} {
		for _, hash := range []bool{true, false} {
			name := tc.name + "/hashed"
			if !hash {
				name = tc.name + "/unhashed"
			}
			t.Run(name, func(t *testing.T) {
				base := t.TempDir()
				root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
				write(t, root, "top.txt", "top level public!")
				write(t, root, "top.txt.meta.json", `{"k":"public value"}`)
				write(t, root, "sub/f.txt", "sub file public!!")
				write(t, outside, "top.txt", secretOutside)
				write(t, outside, "f.txt", secretOutside)
				write(t, outside, "secret.json", `{"k":"`+secretOutside+`"}`)
				opts := testOpts(t, root)
				if !hash {
					opts.NeedHash = func(string) bool { return false }
				}
				w, err := New(opts)
				if err != nil {
					t.Fatal(err)
				}
				done := false
				w.listHook = func(abs string, statted bool) {
					if statted && !done && abs == filepath.Join(root, filepath.FromSlash(tc.dir)) {
						done = true
						tc.swap(t, root, outside)
					}
				}
				snap, err := w.Scan(context.Background(), desired.TriggerManual)
				if err != nil {
					t.Fatal(err)
				}
				if !done {
					t.Fatal("the swap never happened")
				}
				got := map[string]string{}
				for _, st := range snap.States {
					if st.Hash == sha(secretOutside) || strings.Contains(string(st.Metadata), "SECRET") {
						t.Errorf("%s: state of the secret outside the root: %s", st.Key, fmtStates([]desired.State{st}))
					}
					if !strings.HasPrefix(st.Path, root+string(filepath.Separator)) || st.Root != root && st.Err == nil {
						t.Errorf("%s: bytes at %s (root %q)", st.Key, st.Path, st.Root)
					}
					if st.Err != nil {
						got[st.Key] = "held"
					} else {
						got[st.Key] = ""
					}
				}
				if len(got) != len(tc.want) {
					t.Fatalf("keys %v, want %v:%s", got, tc.want, fmtStates(snap.States))
				}
				for k, v := range tc.want {
					if v == "read?" && hash {
						v = "held"
					} else if v == "read?" {
						v = ""
					}
					if g, ok := got[k]; !ok || g != v {
						t.Fatalf("keys %v, want %v:%s", got, tc.want, fmtStates(snap.States))
					}
				}
			})
		}
	}
}

// mustSwap replaces name with a symlink to target.
func mustSwap(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}
