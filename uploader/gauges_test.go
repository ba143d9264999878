package uploader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

// TestHeldBackGauge scripts files into and out of being held back and reads
// kvsync_files_held_back after each step: held back by the watcher (a state
// with an error), by the worker (a file replaced after its scan), released by
// a change, by a deletion, and restated by a full sync.
func TestHeldBackGauge(t *testing.T) {
	tr := newTree(t)
	kv := newFakeKV(t)
	reg := prometheus.NewRegistry()
	all := metrics.New(reg, "test")
	m := all.Sync("site")
	e, _ := newTestEngine(t, kv, newMemStore(), func(o *Options) { o.Metrics = m; o.BulkThreshold = -1 })
	running(t, e)

	heldBack := func(st desired.State, why string) desired.State {
		st.Err = errors.New(why)
		return st
	}
	a := tr.write("a", "a")
	b := tr.write("b", "b")
	c := tr.write("c", "c")
	for _, s := range []struct {
		name string
		do   func()
		want float64
	}{
		{"a clean full sync holds nothing back", func() { e.Snapshot(complete(a, b, c)) }, 0},
		{"two invalid sidecars", func() {
			e.Changed([]desired.State{heldBack(a, "invalid sidecar"), heldBack(b, "invalid sidecar")})
		}, 2},
		{"the same file reported again counts once", func() { e.Changed([]desired.State{heldBack(a, "invalid sidecar")}) }, 2},
		{"a fixed sidecar releases its file", func() { e.Changed([]desired.State{tr.write("a", "a2")}) }, 1},
		{"a file replaced after its scan is held back by the worker", func() {
			st := tr.write("c", "c2")
			// Another inode under the scanned name: not the file the scan saw.
			tmp := filepath.Join(tr.root, "c.tmp")
			if err := os.WriteFile(tmp, []byte("c3"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(tr.root, "c")); err != nil {
				t.Fatal(err)
			}
			e.Changed([]desired.State{st})
		}, 2},
		{"a deleted file is no longer held back", func() { e.Changed([]desired.State{tr.remove("b")}) }, 1},
		{"a full sync states what is held back afresh", func() { e.Snapshot(complete(tr.state("a"), tr.state("c"))) }, 0},
		{"and counts what still is", func() {
			e.Snapshot(complete(heldBack(tr.state("a"), "unreadable"), tr.state("c")))
		}, 1},
		// Nothing to write: no request moves the gauge, the full sync must.
		{"a full sync that finds every file as published", func() {
			e.Snapshot(complete(tr.state("a"), tr.state("c")))
		}, 0},
	} {
		s.do()
		waitIdle(t, e)
		if got := testutil.ToFloat64(m.HeldBack); got != s.want {
			t.Errorf("%s: kvsync_files_held_back{sync=\"site\"} = %v, want %v", s.name, got, s.want)
		}
		if got := testutil.ToFloat64(all.HeldBack.WithLabelValues("site")); got != s.want {
			t.Errorf("%s: the registry's series reads %v, want %v", s.name, got, s.want)
		}
	}
}

// TestQueueGaugesPerSync: two syncs' engines, one stuck with a full queue
// and a write in flight, the other idle. Each sync's queue depth and
// in-flight gauges show its own engine; one shared series would show
// whichever engine set it last.
func TestQueueGaugesPerSync(t *testing.T) {
	all := metrics.New(prometheus.NewRegistry(), "test")
	gate := make(chan struct{})
	stuck := newFakeKV(t)
	stuck.duringPut = func(ctx context.Context, _ string) {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	a, _ := newTestEngine(t, stuck, newMemStore(), func(o *Options) {
		o.Concurrency, o.QueueSize, o.BulkThreshold = 1, 3, -1
		o.Metrics = all.Sync("a")
	})
	b, _ := newTestEngine(t, newFakeKV(t), newMemStore(), func(o *Options) { o.Metrics = all.Sync("b") })
	running(t, a)
	running(t, b)
	trA, trB := newTree(t), newTree(t)
	var statesA []desired.State
	for i := range 4 {
		statesA = append(statesA, trA.write(fmt.Sprintf("f%d", i), strings.Repeat("x", i+1)))
	}
	a.Changed(statesA)
	read := func(sync string) (queued, inflight float64) {
		return testutil.ToFloat64(all.QueueDepth.WithLabelValues(sync)), testutil.ToFloat64(all.InflightUploads.WithLabelValues(sync))
	}
	deadline := time.Now().Add(20 * time.Second)
	for q, f := read("a"); q != 3 || f != 1; q, f = read("a") {
		if time.Now().After(deadline) {
			t.Fatalf("sync a: queue %v, in flight %v; want 3 and 1", q, f)
		}
		time.Sleep(time.Millisecond)
	}
	// b works through its own changes while a is stuck.
	b.Changed([]desired.State{trB.write("x", "x"), trB.write("y", "y")})
	waitIdle(t, b)
	if q, f := read("b"); q != 0 || f != 0 {
		t.Errorf("sync b idle: queue %v, in flight %v; want 0 and 0", q, f)
	}
	if q, f := read("a"); q != 3 || f != 1 {
		t.Errorf("sync a after b ran: queue %v, in flight %v; want 3 and 1", q, f)
	}
	close(gate)
	waitIdle(t, a)
	if q, f := read("a"); q != 0 || f != 0 {
		t.Errorf("sync a idle: queue %v, in flight %v; want 0 and 0", q, f)
	}
}
