// Package memlimit keeps the Go heap's soft limit above what the process
// holds live. kvsync sets a small limit by default, so that the collector,
// not GOGC, decides the peak of a sync; but a limit under the live heap
// (the watcher's known set of a million files is about 100 MB) makes the
// collector run back to back, up to half the CPU by the runtime's own cap,
// for no memory back. Follow lets the limit grow with the live heap and
// come back down with it.
package memlimit

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Limit is the soft limit for a live heap of live bytes under a base
// limit: the base while the heap fits it with room to spare, else half
// again the live heap, as GOGC=50 would allow, so each collection frees
// room for a third of the heap's size in new allocations.
func Limit(base, live int64) int64 {
	return max(base, live+live/2)
}

// tick is collected at every garbage collection; its finalizer is the
// hook that follows the live heap. It holds a pointer so that it is not
// batched with other objects by the tiny allocator, which would delay its
// finalizer past a collection.
type tick struct{ _ *int }

// Follow sets the soft limit to base now and to Limit(base, live) after
// every collection, until stop is called (stop leaves the limit as it
// is). It is meant to be called once, by main, when the user set no
// GOMEMLIMIT.
func Follow(base int64) (stop func()) {
	var stopped atomic.Bool
	debug.SetMemoryLimit(base)
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var arm func()
	arm = func() {
		runtime.SetFinalizer(&tick{}, func(*tick) {
			if stopped.Load() {
				return
			}
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				debug.SetMemoryLimit(Limit(base, int64(sample[0].Value.Uint64())))
			}
			arm()
		})
	}
	arm()
	return func() { stopped.Store(true) }
}
