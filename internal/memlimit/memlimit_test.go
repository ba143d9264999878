package memlimit

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestLimit(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name             string
		base, live, want int64
	}{
		{"small heap keeps the base", 72 * mib, 20 * mib, 72 * mib},
		{"heap at two thirds of the base", 72 * mib, 48 * mib, 72 * mib},
		{"heap over the base", 72 * mib, 100 * mib, 150 * mib},
		{"nothing live", 72 * mib, 0, 72 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Limit(tc.base, tc.live); got != tc.want {
				t.Errorf("Limit(%d, %d) = %d, want %d", tc.base, tc.live, got, tc.want)
			}
		})
	}
}

var sink [][]byte

// After a collection with more live than the base, the limit is above
// the live heap; once that heap is gone, it comes back to the base.
func TestFollow(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	const base = 4 << 20
	stop := Follow(base)
	defer stop()
	for range 32 {
		sink = append(sink, make([]byte, 1<<20)) // 32 MiB live
	}
	waitLimit(t, "above the live heap", func(l int64) bool { return l >= 32<<20 })
	sink = nil
	waitLimit(t, "back at the base", func(l int64) bool { return l == base })
}

func waitLimit(t *testing.T, what string, ok func(int64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		if l := debug.SetMemoryLimit(-1); ok(l) {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("limit %d after collections, want it %s", l, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
