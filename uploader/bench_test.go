package uploader

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
)

// smallTree writes n files of size bytes and returns their states.
func smallTree(tb testing.TB, n, size int) []desired.State {
	root := tb.TempDir()
	content := []byte(strings.Repeat("k", size))
	sum := sha256Hex(content)
	for d := range 100 {
		if err := os.Mkdir(filepath.Join(root, fmt.Sprintf("d%02d", d)), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	// Hard links to one file: the engine reads each path, and creating
	// 10,000 links is much cheaper than writing 10,000 files.
	src := filepath.Join(root, "content")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		tb.Fatal(err)
	}
	fi, err := os.Stat(src)
	if err != nil {
		tb.Fatal(err)
	}
	id, _ := beneath.IdentityOf(fi) // every link is the same file
	states := make([]desired.State, n)
	for i := range n {
		rel := fmt.Sprintf("d%02d/f%05d.txt", i%100, i)
		p := filepath.Join(root, rel)
		if err := os.Link(src, p); err != nil {
			tb.Fatal(err)
		}
		states[i] = desired.State{Key: testPrefix + rel, Path: p, Root: root, Rel: rel, File: id, Hash: sum, Size: int64(size)}
	}
	return states
}

// With the defaults, a full sync of 10,000 files of 1 KiB takes at most two
// write requests (issue 5's bulk goal), and a second sync none.
func TestTenThousandSmallFilesInTwoRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 10,000 files")
	}
	states := smallTree(t, 10000, 1024)
	kv := newFakeKV(t)
	store := newMemStore()
	e, err := New(Options{KV: kv, Store: store, Scope: testScope, Namespace: testNS, Prefix: testPrefix})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := e.SyncOnce(context.Background(), complete(states...))
	if err != nil || rep.Written != 10000 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if n := kv.writes(); n > 2 {
		t.Fatalf("%d write requests for 10,000 x 1 KiB, want <= 2 (bulks %+v)", n, kv.bulks)
	}
	before := kv.writes()
	if _, err := e.SyncOnce(context.Background(), complete(states...)); err != nil || kv.writes() != before {
		t.Fatalf("second sync wrote: %v, %d requests", err, kv.writes()-before)
	}
}

func benchSync(b *testing.B, n, size int) {
	states := smallTree(b, n, size)
	snap := complete(states...)
	b.ReportAllocs()
	b.SetBytes(int64(n * size))
	var writes, bulks int
	for b.Loop() {
		kv := newFakeKV(b)
		e, err := New(Options{KV: kv, Store: newMemStore(), Scope: testScope, Namespace: testNS, Prefix: testPrefix})
		if err != nil {
			b.Fatal(err)
		}
		rep, err := e.SyncOnce(context.Background(), snap)
		if err != nil || rep.Written != n {
			b.Fatalf("%+v, %v", rep, err)
		}
		writes, bulks = kv.writes(), kv.count(kvapi.OpBulkPut)
	}
	b.ReportMetric(float64(writes), "write-requests/op")
	b.ReportMetric(float64(bulks), "bulk-requests/op")
}

// BenchmarkSyncOnce10kx1KiB: a full sync of 10,000 small files through the
// fake KV and an in-memory store, with the defaults.
func BenchmarkSyncOnce10kx1KiB(b *testing.B) { benchSync(b, 10000, 1024) }

// BenchmarkSyncOnce1kx100KiB: memory of a full sync of 100 MB in 1,000
// files; bulk batches of 8 MiB bound what is held at once.
func BenchmarkSyncOnce1kx100KiB(b *testing.B) { benchSync(b, 1000, 100<<10) }
