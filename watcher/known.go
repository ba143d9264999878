package watcher

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"path"
	"strings"
	"unsafe"

	"github.com/kvsync/kvsync/internal/desired"
)

// knownSet holds, per relative path, a fingerprint of the last state
// emitted for it and, per directory, how many of them lie below it, so a
// change to one file does not have to look at every key to find what its
// path used to hold.
//
// It is the one structure the watcher keeps per file between events, and
// it is needed: it tells an event's state that changes nothing (a
// rewrite with the same content, an editor's save dance) from one that
// does, without asking the sink, and it finds the paths that went away
// under a removed or renamed directory. The state store cannot answer
// either: it holds what the engine has written, which lags behind what
// the watcher has handed over (the queue, the requests in flight, the
// held-back files it never records), so a directory removed before the
// engine caught up would leave keys behind.
//
// So it keeps the least that does that, and none of it holds a pointer:
// the paths are packed end to end in one byte slice, each path's 32-byte
// slot (where its path lies, its fingerprint, its scan generation) in
// another, and the index from a hash of a path to its slot is a table of
// integers. The garbage collector therefore never scans it: a
// million paths are three objects to it, not a million strings, which it
// used to trace on every cycle while a first scan filled the set. A file
// costs its path's bytes, its slot and 5 to 11 bytes of the table.
type knownSet struct {
	seed maphash.Seed
	// table indexes the slots by their paths' hashes: an open-addressed
	// table of 1 + a slot's index (0: empty), probed linearly from the
	// position the hash's low bits give, a power of two long and at most
	// three quarters full. 4 bytes a position, where a Go map of integers
	// takes about 20 per entry.
	table []uint32
	slots []knownSlot
	// paths holds every path's bytes. It is only ever appended to, and
	// rebuilt whole by compact: the bytes a slot points at never change.
	paths []byte
	// free lists the slots of removed paths, for reuse; dead counts the
	// bytes of paths of removed slots, which compact reclaims.
	free []uint32
	dead int
	live int
	dirs map[string]int
	// gen is the full scan that set marks its entries with: one that ran
	// to the end forgets those it did not mark, without a set of the
	// paths it found.
	gen uint32
	// testHash, when set, replaces the hash of paths: tests make paths
	// collide with it.
	testHash func(string) uint64
	// buf is fingerprint's scratch space: the set is used under
	// Watcher.mu only.
	buf []byte
}

// knownSlot is 32 bytes: where its path lies in knownSet.paths, the low
// 32 bits of the path's hash (its place in the table, and a test before
// the path is compared), the scan generation and a 12-byte fingerprint (a
// collision between two states of one path has odds of 2^-96). A free
// slot has n == 0 (no file has an empty relative path).
type knownSlot struct {
	off uint64
	n   uint32
	tag uint32
	gen uint32
	fp  fingerprint
}

// fingerprint stands for a state in sameState's sense: two states with the
// same fingerprint tell the sink the same thing.
type fingerprint [12]byte

func newKnownSet() knownSet {
	return knownSet{seed: maphash.MakeSeed(), dirs: make(map[string]int)}
}

// fingerprintOf digests every field sameState compares, each
// length-prefixed so that no two sequences of fields digest alike.
func fingerprintOf(st desired.State) fingerprint {
	f, _ := fingerprintInto(nil, st)
	return f
}

// fingerprintInto is fingerprintOf with its input built in buf, which it
// returns for reuse: no allocation per file.
func fingerprintInto(buf []byte, st desired.State) (fingerprint, []byte) {
	b := buf[:0]
	field := func(s string) {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	num := func(v uint64) { b = binary.BigEndian.AppendUint64(b, v) }
	field(st.Key)
	field(st.Path)
	field(st.Root)
	field(st.Rel)
	num(st.File.Dev)
	num(st.File.Ino)
	num(uint64(st.File.Size))
	if st.Deleted {
		num(1)
	} else {
		num(0)
	}
	field(st.Hash)
	num(uint64(st.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(len(st.Metadata)))
	b = append(b, st.Metadata...)
	num(uint64(st.Expiration.TTL))
	if st.Expiration.At.IsZero() {
		field("")
	} else {
		at, _ := st.Expiration.At.UTC().MarshalBinary()
		field(string(at))
	}
	if st.Err != nil {
		field(st.Err.Error())
	} else {
		field("")
	}
	sum := sha256.Sum256(b)
	var f fingerprint
	copy(f[:], sum[:])
	return f, b
}

func (k *knownSet) hash(rel string) uint64 {
	if k.testHash != nil {
		return k.testHash(rel)
	}
	return maphash.String(k.seed, rel)
}

// pathAt is slot i's path. The string shares the arena's bytes, which are
// never written again once appended (see knownSet.paths), so it stays
// valid, and holds the arena alive, for as long as it is referenced.
func (k *knownSet) pathAt(i int) string {
	sl := &k.slots[i]
	return unsafe.String(&k.paths[sl.off], int(sl.n))
}

// find returns rel's tag (its hash's low bits), its position in the
// table (where it would go when not known) and its slot, -1 when rel is
// not known.
func (k *knownSet) find(rel string) (tag uint32, pos, i int) {
	tag = uint32(k.hash(rel))
	if len(k.table) == 0 {
		return tag, -1, -1
	}
	mask := len(k.table) - 1
	for p := int(tag) & mask; ; p = (p + 1) & mask {
		j := k.table[p]
		if j == 0 {
			return tag, p, -1
		}
		if k.slots[j-1].tag == tag && k.pathAt(int(j-1)) == rel {
			return tag, p, int(j - 1)
		}
	}
}

func (k *knownSet) set(rel string, st desired.State) {
	var fp fingerprint
	fp, k.buf = fingerprintInto(k.buf, st)
	tag, pos, i := k.find(rel)
	if i >= 0 {
		k.slots[i].fp, k.slots[i].gen = fp, k.gen
		return
	}
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		k.dirs[d]++
	}
	if (k.live+1)*4 > len(k.table)*3 {
		k.reindex(max(1024, 2*len(k.table)))
		_, pos, _ = k.find(rel)
	}
	sl := knownSlot{off: uint64(len(k.paths)), n: uint32(len(rel)), tag: tag, gen: k.gen, fp: fp}
	k.paths = append(k.paths, rel...)
	if n := len(k.free); n > 0 {
		i = int(k.free[n-1])
		k.free = k.free[:n-1]
		k.slots[i] = sl
	} else {
		i = len(k.slots)
		k.slots = append(k.slots, sl)
	}
	k.table[pos] = uint32(i + 1)
	k.live++
}

// reindex rebuilds the table with size positions.
func (k *knownSet) reindex(size int) {
	k.table = make([]uint32, size)
	mask := size - 1
	for i := range k.slots {
		sl := &k.slots[i]
		if sl.n == 0 {
			continue
		}
		p := int(sl.tag) & mask
		for k.table[p] != 0 {
			p = (p + 1) & mask
		}
		k.table[p] = uint32(i + 1)
	}
}

// has reports whether rel is known.
func (k *knownSet) has(rel string) bool {
	_, _, i := k.find(rel)
	return i >= 0
}

// same reports whether st tells the sink nothing new about rel.
func (k *knownSet) same(rel string, st desired.State) bool {
	_, _, i := k.find(rel)
	if i < 0 {
		return false
	}
	var fp fingerprint
	fp, k.buf = fingerprintInto(k.buf, st)
	return k.slots[i].fp == fp
}

func (k *knownSet) remove(rel string) {
	_, pos, i := k.find(rel)
	if i < 0 {
		return
	}
	k.removeAt(pos, i, rel)
	k.maybeCompact()
}

// removeAt frees slot i, whose path rel sits at pos in the table; it
// moves no slot, so a loop over the slots may go on.
func (k *knownSet) removeAt(pos, i int, rel string) {
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		if k.dirs[d]--; k.dirs[d] <= 0 {
			delete(k.dirs, d)
		}
	}
	// Backward-shift deletion: each entry after the hole in its probe run
	// moves into it unless its home lies between the hole and itself, so
	// every probe still reaches its entry without tombstones.
	mask := len(k.table) - 1
	k.table[pos] = 0
	for q := (pos + 1) & mask; k.table[q] != 0; q = (q + 1) & mask {
		home := int(k.slots[k.table[q]-1].tag) & mask
		var between bool
		if pos < q {
			between = pos < home && home <= q
		} else {
			between = pos < home || home <= q
		}
		if !between {
			k.table[pos], k.table[q] = k.table[q], 0
			pos = q
		}
	}
	k.dead += int(k.slots[i].n)
	k.slots[i] = knownSlot{}
	k.free = append(k.free, uint32(i))
	k.live--
}

// forgetUnmarked removes every path the scan of generation gen did not
// mark, but those keep says to keep.
func (k *knownSet) forgetUnmarked(keep func(rel string) bool) {
	for i := range k.slots {
		sl := &k.slots[i]
		if sl.n == 0 || sl.gen == k.gen {
			continue
		}
		rel := k.pathAt(i)
		if keep(rel) {
			continue
		}
		_, pos, _ := k.find(rel)
		k.removeAt(pos, i, rel)
	}
	k.maybeCompact()
}

// maybeCompact rebuilds the set once removed paths take more room than
// those left, so its memory follows the tree (the arena only grows, and
// the table only grows on insertion).
func (k *knownSet) maybeCompact() {
	if k.dead < 64<<10 && len(k.free) < 4096 {
		return
	}
	if k.dead <= len(k.paths)-k.dead && len(k.free) <= k.live {
		return
	}
	k.compact()
}

func (k *knownSet) compact() {
	paths := make([]byte, 0, len(k.paths)-k.dead)
	slots := make([]knownSlot, 0, k.live)
	for i := range k.slots {
		sl := k.slots[i]
		if sl.n == 0 {
			continue
		}
		rel := k.pathAt(i)
		sl.off = uint64(len(paths))
		paths = append(paths, rel...)
		slots = append(slots, sl)
	}
	k.paths, k.slots = paths, slots
	k.free, k.dead = nil, 0
	size := 1024
	for k.live*4 > size*3 {
		size *= 2
	}
	k.reindex(size)
}

// below returns rel itself if known and every known path under it.
func (k *knownSet) below(rel string) []string {
	var out []string
	if rel == "" || k.dirs[rel] > 0 {
		for i := range k.slots {
			if k.slots[i].n == 0 {
				continue
			}
			// Copied: a caller keeping it must not keep the arena.
			if r := k.pathAt(i); under(r, rel) {
				out = append(out, strings.Clone(r))
			}
		}
		return out
	}
	if _, _, i := k.find(rel); i >= 0 {
		out = append(out, rel)
	}
	return out
}
