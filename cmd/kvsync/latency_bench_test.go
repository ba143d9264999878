package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// BenchmarkChangeToKV measures change-to-KV latency: from a file's write
// until the emulator holds its new content, over 200 changes made at 50
// changes/s, with a 100 ms quiet period. It reports the median and p99 in
// milliseconds; the target is median <= quiet+100ms, p99 <= quiet+500ms.
//
//	go test -run '^$' -bench ChangeToKV -benchtime 1x ./cmd/kvsync
func BenchmarkChangeToKV(b *testing.B) {
	const (
		changes = 200
		every   = 20 * time.Millisecond // 50 changes/s
		files   = 40
	)
	for i := 0; i < b.N; i++ {
		lat := measureChangeLatency(b, changes, every, files)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	}
}

func measureChangeLatency(b *testing.B, changes int, every time.Duration, files int) []time.Duration {
	b.Helper()
	b.StopTimer()
	em, err := emulator.New(emulator.Options{Token: testToken})
	if err != nil {
		b.Fatal(err)
	}
	env := newKVEnvFrom(b, em)
	for f := 0; f < files; f++ {
		mustWrite(b, filepath.Join(env.root, fmt.Sprintf("f%02d.txt", f)), "initial")
	}
	// No Cloudflare budget on the emulator here, and a limiter that does not
	// throttle 50 changes/s: this measures the pipeline, not the budget.
	env.writeConfig("rate: 200\nburst: 200\nbudget: 60200", "")
	d := env.startDaemon()
	d.waitReady(30 * time.Second)

	written := make([]time.Time, changes)
	seen := make([]time.Time, changes)
	done := make(chan struct{})
	go func() {
		defer close(done)
		next := 0
		for next < changes {
			snap := em.Snapshot(testAccount, testNamespace)
			now := time.Now()
			for i := next; i < changes; i++ {
				if written[i].IsZero() {
					break
				}
				want := fmt.Sprintf("change %d", i)
				if e, ok := snap[fmt.Sprintf("f%02d.txt", i%files)]; ok && string(e.Value) == want && seen[i].IsZero() {
					seen[i] = now
				}
			}
			for next < changes && !seen[next].IsZero() {
				next++
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	b.StartTimer()
	tick := time.NewTicker(every)
	for i := 0; i < changes; i++ {
		<-tick.C
		written[i] = time.Now()
		mustWrite(b, filepath.Join(env.root, fmt.Sprintf("f%02d.txt", i%files)), fmt.Sprintf("change %d", i))
	}
	tick.Stop()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatal("not every change reached KV within 2 minutes")
	}
	b.StopTimer()
	d.stop()
	lat := make([]time.Duration, changes)
	for i := range lat {
		lat[i] = seen[i].Sub(written[i])
	}
	return lat
}
