// Package bench holds kvsync's end-to-end benchmarks. run.sh drives the
// real binary against the emulator and compares it with wrangler and curl;
// the Go benchmarks here run the same pipeline in-process (watcher scan,
// engine, state store, kvapi client with rate limiting and retries, the
// emulator over loopback HTTP) so that it can be profiled:
//
//	go test -run '^$' -bench FullSync -benchtime 5x -cpuprofile /tmp/cpu.out ./bench
//	go tool pprof -top /tmp/cpu.out
package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/ratelimit"
	"github.com/kvsync/kvsync/uploader"
	"github.com/kvsync/kvsync/watcher"
)

const (
	benchAccount = "bench-account"
	benchToken   = "bench-token"
)

// writeTree writes files of size bytes in the layout of benchtool gen
// (two directory levels, a sidecar on every tenth file).
func writeTree(tb testing.TB, root string, files, size int) {
	tb.Helper()
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = 'a' + byte(i%26)
	}
	for i := range files {
		p := filepath.Join(root, fmt.Sprintf("d%02d", i%16), fmt.Sprintf("e%02d", (i/16)%32), fmt.Sprintf("f%06d.txt", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		copy(buf, fmt.Sprintf("%08d", i))
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			tb.Fatal(err)
		}
		if i%10 == 0 {
			if err := os.WriteFile(p+".meta.json", []byte(fmt.Sprintf(`{"n": %d}`, i)), 0o644); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// pipeline is kvsync sync's wiring (cmd/kvsync/app.go) with default API
// settings, pointed at an in-process emulator.
type pipeline struct {
	kv  kvapi.KV
	em  *emulator.Emulator
	srv *httptest.Server
}

func newPipeline(tb testing.TB) *pipeline {
	tb.Helper()
	em, err := emulator.New(emulator.Options{Token: benchToken})
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(em)
	tb.Cleanup(func() {
		srv.Close()
		em.Close()
	})
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = uploader.DefaultConcurrency + 2
	client, err := kvapi.New(kvapi.Options{
		BaseURL:    srv.URL + emulator.PathPrefix,
		AccountID:  benchAccount,
		Token:      benchToken,
		HTTPClient: &http.Client{Transport: transport, Timeout: 5 * time.Minute},
	})
	if err != nil {
		tb.Fatal(err)
	}
	r, burst := ratelimit.DefaultRate()
	lim := ratelimit.NewLimiter(ratelimit.LimiterOptions{Rate: rate.Limit(r), Burst: burst})
	kv := ratelimit.Retry(ratelimit.Limit(client, lim), ratelimit.RetryPolicy{}, lim, nil, nil)
	return &pipeline{kv: kv, em: em, srv: srv}
}

// phases are the wall times of a sync's stages.
type phases struct{ open, scan, sync time.Duration }

// syncOnce publishes root into a fresh namespace with a fresh state store,
// as `kvsync sync` does on its first run, and returns the engine's report.
func (p *pipeline) syncOnce(tb testing.TB, root, ns string) uploader.Report {
	rep, _ := p.syncOncePhases(tb, root, ns)
	return rep
}

func (p *pipeline) syncOncePhases(tb testing.TB, root, ns string) (uploader.Report, phases) {
	return p.syncOnceWith(tb, root, ns, uploader.Options{})
}

// syncOnceWith is syncOncePhases with engine options: the zero fields of
// tune get kvsync's values, the others override them.
func (p *pipeline) syncOnceWith(tb testing.TB, root, ns string, tune uploader.Options) (uploader.Report, phases) {
	tb.Helper()
	ctx := context.Background()
	var ph phases
	t0 := time.Now()
	st, err := state.Open(filepath.Join(tb.TempDir(), "state.db"), state.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	// A fresh store holds no record, so, as kvsync sync does then, the scan
	// hashes no file: each is read once, when it is sent.
	w, err := watcher.New(watcher.Options{Root: root, RescanInterval: -1, NeedHash: func(string) bool { return false }})
	if err != nil {
		tb.Fatal(err)
	}
	o := tune
	o.KV, o.Store, o.Scope, o.Namespace = p.kv, st, benchAccount+"/"+ns, ns
	o.MaxDeletes, o.Reconcile = 1000, st.Fresh()
	e, err := uploader.New(o)
	if err != nil {
		tb.Fatal(err)
	}
	t1 := time.Now()
	snap, err := w.Scan(ctx, desired.TriggerStartup)
	if err != nil {
		tb.Fatal(err)
	}
	t2 := time.Now()
	rep, err := e.SyncOnce(ctx, snap)
	if err != nil {
		tb.Fatalf("SyncOnce: %v (%+v)", err, rep)
	}
	ph.open, ph.scan, ph.sync = t1.Sub(t0), t2.Sub(t1), time.Since(t2)
	return rep, ph
}

func benchmarkFullSync(b *testing.B, files, size int) {
	root := b.TempDir()
	writeTree(b, root, files, size)
	benchmarkFullSyncOf(b, root, files, size, uploader.Options{})
}

func benchmarkFullSyncOf(b *testing.B, root string, files, size int, tune uploader.Options) {
	p := newPipeline(b)
	b.SetBytes(int64(files) * int64(size))
	var total phases
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ns := fmt.Sprintf("bench-%d", i)
		before := p.em.Count(emulator.OpBulkPut, 0) + p.em.Count(emulator.OpPut, 0)
		rep, ph := p.syncOnceWith(b, root, ns, tune)
		total.open += ph.open
		total.scan += ph.scan
		total.sync += ph.sync
		// Checking the result copies every entry: not part of a sync.
		b.StopTimer()
		writes := p.em.Count(emulator.OpBulkPut, 0) + p.em.Count(emulator.OpPut, 0) - before
		if rep.Written != files {
			b.Fatalf("written %d of %d", rep.Written, files)
		}
		if got := len(p.em.Snapshot(benchAccount, ns)); got != files {
			b.Fatalf("emulator holds %d keys, want %d", got, files)
		}
		b.ReportMetric(float64(writes), "writes/op")
		b.StartTimer()
	}
	b.ReportMetric(float64(files)*float64(b.N)/b.Elapsed().Seconds(), "files/s")
	// Where the time goes: opening the state store, the watcher's scan
	// (a stat of every file), and the engine's pass (which reads them).
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(total.open), "open-ms/op")
	b.ReportMetric(ms(total.scan), "scan-ms/op")
	b.ReportMetric(ms(total.sync), "sync-ms/op")
}

// BenchmarkFullSync10kx1KiB is the first tree: its target is at most
// two write requests.
func BenchmarkFullSync10kx1KiB(b *testing.B) { benchmarkFullSync(b, 10_000, 1<<10) }

// BenchmarkFullSync10kx1KiBBatches compares bulk batch sizes on the same
// tree: one batch of 10,000 pairs, or two of 5,000 (still within the
// issue's two write requests), whose reading and sending overlap.
func BenchmarkFullSync10kx1KiBBatches(b *testing.B) {
	root := b.TempDir()
	writeTree(b, root, 10_000, 1<<10)
	for _, pairs := range []int{10_000, 5_000} {
		b.Run(fmt.Sprintf("pairs=%d", pairs), func(b *testing.B) {
			benchmarkFullSyncOf(b, root, 10_000, 1<<10, uploader.Options{BulkMaxPairs: pairs})
		})
	}
}

// BenchmarkFullSync1kx100KiB: a thousand mid-sized files, still bulk-eligible.
func BenchmarkFullSync1kx100KiB(b *testing.B) { benchmarkFullSync(b, 1_000, 100<<10) }

// TestFullSyncWriteRequests pins the request count the benchmark reports:
// 10,000 small files are one bulk write (and one listing of the fresh
// namespace), whatever the machine's speed.
func TestFullSyncWriteRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 10,000 files")
	}
	root := t.TempDir()
	writeTree(t, root, 10_000, 1<<10)
	p := newPipeline(t)
	rep := p.syncOnce(t, root, "ns-writes")
	if rep.Written != 10_000 {
		t.Fatalf("written %d", rep.Written)
	}
	counts := p.em.Counts()
	writes := 0
	for k, n := range counts {
		switch k.Op {
		case emulator.OpPut, emulator.OpBulkPut, emulator.OpDelete, emulator.OpBulkDelete:
			writes += n
		}
	}
	if writes > 2 {
		t.Errorf("%d write requests for 10,000 files of 1 KiB, want at most 2 (%v)", writes, counts)
	}
	snap := p.em.Snapshot(benchAccount, "ns-writes")
	if len(snap) != 10_000 {
		t.Fatalf("emulator holds %d keys", len(snap))
	}
	if e := snap["d00/e00/f000000.txt"]; string(e.Metadata) != `{"n":0}` {
		t.Errorf("sidecar metadata %q", e.Metadata)
	}
}
