package watcher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
)

// The 100k-file tree is built once per test binary (it takes a while) and
// removed by TestMain.
var bench100k struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench100k.dir != "" {
		os.RemoveAll(bench100k.dir)
	}
	if bench10k.dir != "" {
		os.RemoveAll(bench10k.dir)
	}
	os.Exit(code)
}

// tree100k returns a tree of 100,000 small files: 100 directories of 10
// subdirectories of 100 files.
func tree100k(b *testing.B) string {
	b.Helper()
	bench100k.once.Do(func() {
		dir, err := os.MkdirTemp("", "kvsync-bench-")
		if err != nil {
			bench100k.err = err
			return
		}
		bench100k.dir = dir
		for d := range 100 {
			for s := range 10 {
				sub := filepath.Join(dir, fmt.Sprintf("d%03d", d), fmt.Sprintf("s%d", s))
				if err := os.MkdirAll(sub, 0o755); err != nil {
					bench100k.err = err
					return
				}
				for f := range 100 {
					name := filepath.Join(sub, fmt.Sprintf("f%03d.html", f))
					if err := os.WriteFile(name, []byte("<p>"+name+"</p>"), 0o644); err != nil {
						bench100k.err = err
						return
					}
				}
			}
		}
	})
	if bench100k.err != nil {
		b.Fatal(bench100k.err)
	}
	return bench100k.dir
}

func benchScan(b *testing.B, w *Watcher) {
	b.Helper()
	snap, err := w.Scan(context.Background(), desired.TriggerPeriodic)
	if err != nil || !snap.Complete || len(snap.States) != 100_000 {
		b.Fatalf("scan: %d states, complete %v, %v", len(snap.States), snap.Complete, err)
	}
}

// BenchmarkFullScan100k measures a cold full scan (empty hash cache, page
// cache warm): walk, stat, open and hash 100,000 files.
func BenchmarkFullScan100k(b *testing.B) {
	root := tree100k(b)
	b.ResetTimer()
	for b.Loop() {
		w, err := New(Options{Root: root})
		if err != nil {
			b.Fatal(err)
		}
		benchScan(b, w)
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N)*1e6/100_000, "µs/file")
}

// BenchmarkRescanUnchanged100k measures a rescan with the hash cache warm:
// walk and stat only, no file opened.
func BenchmarkRescanUnchanged100k(b *testing.B) {
	root := tree100k(b)
	// The tree may have been written moments ago; move the clock past the
	// racy window so the first scan's hashes are cached.
	later := time.Now().Add(time.Hour)
	opened := &countingOpen{}
	w, err := New(Options{Root: root, Now: func() time.Time { return later }})
	if err != nil {
		b.Fatal(err)
	}
	w.open = opened.open
	benchScan(b, w)
	warm := opened.count()
	b.ResetTimer()
	for b.Loop() {
		benchScan(b, w)
	}
	b.StopTimer()
	if n := opened.count() - warm; n != 0 {
		b.Fatalf("rescans opened %d files", n)
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N)*1e6/100_000, "µs/file")
}

// The 10k-file tree with sidecars, built once per test binary like the 100k one.
var bench10k struct {
	once sync.Once
	dir  string
	root string
	err  error
}

// tree10kSidecars returns a tree shaped like the benchmark's "small" tree:
// 10,000 files of 1 KiB spread over 16x32 directories, every tenth with a
// metadata sidecar. The root lies a few directories deep, as a real one
// does, since stat by absolute path pays for every component.
func tree10kSidecars(b *testing.B) string {
	b.Helper()
	bench10k.once.Do(func() {
		dir, err := os.MkdirTemp("", "kvsync-bench10k-")
		if err != nil {
			bench10k.err = err
			return
		}
		bench10k.dir = dir
		root := filepath.Join(dir, "bench", "out", "trees", "small")
		body := make([]byte, 1024)
		for i := range body {
			body[i] = byte('a' + i%26)
		}
		for i := range 10_000 {
			sub := filepath.Join(root, fmt.Sprintf("d%02d", i%16), fmt.Sprintf("e%02d", (i/16)%32))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				bench10k.err = err
				return
			}
			name := filepath.Join(sub, fmt.Sprintf("f%06d.txt", i))
			if err := os.WriteFile(name, body, 0o644); err != nil {
				bench10k.err = err
				return
			}
			if i%10 == 0 {
				meta := fmt.Sprintf("{\n  \"n\": %d,\n  \"content-type\": \"text/plain\"\n}\n", i)
				if err := os.WriteFile(name+SidecarSuffix, []byte(meta), 0o644); err != nil {
					bench10k.err = err
					return
				}
			}
		}
		bench10k.root = root
	})
	if bench10k.err != nil {
		b.Fatal(bench10k.err)
	}
	return bench10k.root
}

// BenchmarkFirstPublish10k measures the scan of a first publish: the sink
// needs no hash (Options.NeedHash), so only the sidecars are read.
func BenchmarkFirstPublish10k(b *testing.B) {
	root := tree10kSidecars(b)
	b.ResetTimer()
	for b.Loop() {
		w, err := New(Options{Root: root, NeedHash: func(string) bool { return false }})
		if err != nil {
			b.Fatal(err)
		}
		snap, err := w.Scan(context.Background(), desired.TriggerStartup)
		if err != nil || !snap.Complete || len(snap.States) != 10_000 {
			b.Fatalf("scan: %d states, complete %v, %v", len(snap.States), snap.Complete, err)
		}
		withMeta := 0
		for _, st := range snap.States {
			if st.Metadata != nil {
				withMeta++
			}
		}
		if withMeta != 1000 {
			b.Fatalf("%d states with metadata, want 1000", withMeta)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N)*1e6/10_000, "µs/file")
}
