package watcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// TestFingerprint: every field the sink acts on changes a state's
// fingerprint, so an event that changes any of them is emitted; the stamp
// alone (a touch) does not.
func TestFingerprint(t *testing.T) {
	base := desired.State{Key: "p/a", Path: "/r/a", Root: "/r", Rel: "a", File: beneath.Identity{Dev: 1, Ino: 2, Size: 3},
		Hash: "h", Size: 3, Metadata: json.RawMessage(`{"a":1}`), Expiration: desired.Expiration{TTL: time.Hour}}
	tests := []struct {
		name   string
		change func(*desired.State)
		same   bool
	}{
		{"nothing", func(*desired.State) {}, true},
		{"stamp alone", func(s *desired.State) { s.Stamp = desired.Stamp{Mtime: 5} }, true},
		{"key", func(s *desired.State) { s.Key = "p/b" }, false},
		{"path", func(s *desired.State) { s.Path = "/r/b" }, false},
		{"root", func(s *desired.State) { s.Root = "/s" }, false},
		{"rel", func(s *desired.State) { s.Rel = "b" }, false},
		{"inode", func(s *desired.State) { s.File.Ino = 9 }, false},
		{"deleted", func(s *desired.State) { s.Deleted = true }, false},
		{"hash", func(s *desired.State) { s.Hash = "i" }, false},
		{"size", func(s *desired.State) { s.Size = 4 }, false},
		{"metadata", func(s *desired.State) { s.Metadata = json.RawMessage(`{"a":2}`) }, false},
		{"no metadata", func(s *desired.State) { s.Metadata = nil }, false},
		{"ttl", func(s *desired.State) { s.Expiration.TTL = 2 * time.Hour }, false},
		{"at", func(s *desired.State) { s.Expiration.At = time.Unix(2e9, 0) }, false},
		{"held back", func(s *desired.State) { s.Err = errors.New("bad sidecar") }, false},
		// Length-prefixed fields: moving bytes between two is a change.
		{"bytes moved between fields", func(s *desired.State) { s.Key, s.Path = "p/a/r", "/a" }, false},
	}
	f := fingerprintOf(base)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := base
			tc.change(&st)
			if got := fingerprintOf(st) == f; got != tc.same {
				t.Errorf("same fingerprint = %v, want %v", got, tc.same)
			}
		})
	}
}

// knownState is a distinct state per content string.
func knownState(rel, content string) desired.State {
	return desired.State{Key: rel, Rel: rel, Hash: content, Size: int64(len(content))}
}

// TestKnownSet: what one path was last emitted as, the paths below a
// directory, and a full scan's forgetting, with paths in their own hash
// chains and with every path sharing one hash, and through the
// compactions that many removals set off.
func TestKnownSet(t *testing.T) {
	hashes := []struct {
		name string
		hash func(string) uint64
	}{
		{"maphash", nil},
		{"all paths collide", func(string) uint64 { return 7 }},
		{"two chains", func(s string) uint64 { return uint64(len(s) % 2) }},
	}
	for _, hc := range hashes {
		t.Run(hc.name, func(t *testing.T) {
			k := newKnownSet()
			k.testHash = hc.hash
			var rels []string
			for d := range 3 {
				for f := range 3000 {
					rels = append(rels, fmt.Sprintf("d%d/s%d/f%04d", d, f%3, f))
				}
			}
			rels = append(rels, "top")
			k.gen = 1
			for _, rel := range rels {
				k.set(rel, knownState(rel, "v1"))
			}
			if !k.same("d1/s0/f0000", knownState("d1/s0/f0000", "v1")) || k.same("d1/s0/f0000", knownState("d1/s0/f0000", "v2")) {
				t.Fatal("same does not tell the state last set")
			}
			if k.same("d9/x", knownState("d9/x", "v1")) || k.has("d9/x") {
				t.Fatal("an unknown path is known")
			}
			if got := len(k.below("d2")); got != 3000 {
				t.Fatalf("below(d2) = %d paths, want 3000", got)
			}
			if got := k.below("d2/s1/f0001"); len(got) != 1 || got[0] != "d2/s1/f0001" {
				t.Fatalf("below(a file) = %v", got)
			}
			if got := len(k.below("")); got != len(rels) {
				t.Fatalf("below(root) = %d paths, want %d", got, len(rels))
			}
			k.set("d1/s0/f0000", knownState("d1/s0/f0000", "v2"))
			if !k.same("d1/s0/f0000", knownState("d1/s0/f0000", "v2")) {
				t.Fatal("a set did not replace the state")
			}

			// Remove all of d0 one by one: compactions run on the way.
			for _, rel := range k.below("d0") {
				k.remove(rel)
			}
			if k.dirs["d0"] != 0 || k.dirs["d0/s1"] != 0 || len(k.below("d0")) != 0 {
				t.Fatalf("d0 still counts %d paths", k.dirs["d0"])
			}
			// A scan of generation 2 marks d1 only; d2 is kept as covered.
			k.gen = 2
			for _, rel := range rels {
				if strings.HasPrefix(rel, "d1/") {
					k.set(rel, knownState(rel, "v3"))
				}
			}
			k.forgetUnmarked(func(rel string) bool { return under(rel, "d2") })
			for _, rel := range rels {
				want := !strings.HasPrefix(rel, "d0/") && rel != "top"
				if k.has(rel) != want {
					t.Fatalf("has(%s) = %v, want %v", rel, !want, want)
				}
			}
			if k.live != 6000 || len(k.below("")) != 6000 || k.dirs["d1"] != 3000 || k.dirs["d2/s2"] != 1000 {
				t.Fatalf("live %d, below %d, d1 %d, d2/s2 %d", k.live, len(k.below("")), k.dirs["d1"], k.dirs["d2/s2"])
			}
			// Generation 3 marks d1 and forgets the rest: the set is
			// compacted, and d1's states come through it.
			k.gen = 3
			for _, rel := range k.below("d1") {
				k.set(rel, knownState(rel, "v4"))
			}
			k.forgetUnmarked(func(string) bool { return false })
			if len(k.free) != 0 || k.dead != 0 || len(k.slots) != 3000 || indexed(k) != 3000 || len(k.table) != 4096 {
				t.Fatalf("not compacted: %d free slots, %d dead bytes, %d slots", len(k.free), k.dead, len(k.slots))
			}
			for _, rel := range rels {
				want := strings.HasPrefix(rel, "d1/")
				if k.has(rel) != want || (want && !k.same(rel, knownState(rel, "v4"))) {
					t.Fatalf("after compaction, has(%s) = %v, want %v, or its state is lost", rel, !want, want)
				}
			}
			if len(k.below("d2")) != 0 || len(k.below("d1/s1")) != 1000 || len(k.dirs) != 4 {
				t.Fatalf("after compaction: below(d2) %d, below(d1/s1) %d, dirs %v", len(k.below("d2")), len(k.below("d1/s1")), k.dirs)
			}
			// Memory follows the tree: an emptied set holds no more than
			// the slack compaction leaves (64 KiB of paths, 4,096 slots).
			k.gen = 4
			k.forgetUnmarked(func(string) bool { return false })
			if k.live != 0 || len(k.slots) > 4096 || len(k.paths) > 64<<10 || indexed(k) != 0 || len(k.dirs) != 0 {
				t.Fatalf("emptied set holds %d live, %d slots, %d bytes, %d indexed, %d dirs", k.live, len(k.slots), len(k.paths), indexed(k), len(k.dirs))
			}
			// A path removed and set again, over and over, does not grow it.
			for i := range 100_000 {
				k.set("churn", knownState("churn", strconv.Itoa(i)))
				k.remove("churn")
			}
			if len(k.paths) > 64<<10+len("churn") || len(k.slots) > 4096 {
				t.Fatalf("churn left %d bytes and %d slots", len(k.paths), len(k.slots))
			}
		})
	}
}

// indexed counts the table's entries.
func indexed(k knownSet) int {
	n := 0
	for _, j := range k.table {
		if j != 0 {
			n++
		}
	}
	return n
}

// BenchmarkKnownSetFill1M fills the known set with a million paths of the
// million-file benchmark's shape, then collects garbage: the collection's
// time is what the set costs the collector on each cycle while it is
// resident, and the heap it adds is its cost per file.
func BenchmarkKnownSetFill1M(b *testing.B) {
	const n = 1_000_000
	// The paths are made as they are set, so that the collection's
	// time is the set's alone.
	rel := func(i int) string { return fmt.Sprintf("d%d/s%02d/file%07d.txt", i%7, i%36, i) }
	st := knownState("x", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	var gc time.Duration
	var perFile float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		k := newKnownSet()
		k.gen = 1
		for i := range n {
			k.set(rel(i), st)
		}
		t0 := time.Now()
		runtime.GC()
		gc += time.Since(t0)
		runtime.ReadMemStats(&after)
		perFile = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(k)
	}
	b.ReportMetric(float64(gc.Microseconds())/1000/float64(b.N), "ms/gc")
	b.ReportMetric(perFile, "B/file")
}
