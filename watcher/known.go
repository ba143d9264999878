package watcher

import (
	"crypto/sha256"
	"encoding/binary"
	"path"

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
// under a removed or renamed directory. So it keeps the least that does
// that: the path and 16 bytes (about 80 bytes a file with the map's own
// overhead, against 300 and more for a whole desired.State); the key of a
// path that went away is derived again from the path.
type knownSet struct {
	states map[string]knownEntry
	dirs   map[string]int
	// gen is the full scan that set marks its entries with: one that ran
	// to the end forgets those it did not mark, without a set of the
	// paths it found.
	gen uint32
}

// knownEntry is 16 bytes: a 12-byte fingerprint (a collision between two
// states of one path has odds of 2^-96) and the scan generation.
type knownEntry struct {
	fp  fingerprint
	gen uint32
}

// fingerprint stands for a state in sameState's sense: two states with the
// same fingerprint tell the sink the same thing.
type fingerprint [12]byte

// fingerprintOf digests every field sameState compares, each
// length-prefixed so that no two sequences of fields digest alike.
func fingerprintOf(st desired.State) fingerprint {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	num := func(v uint64) {
		binary.BigEndian.PutUint64(n[:], v)
		h.Write(n[:])
	}
	field([]byte(st.Key))
	field([]byte(st.Path))
	field([]byte(st.Root))
	field([]byte(st.Rel))
	num(st.File.Dev)
	num(st.File.Ino)
	num(uint64(st.File.Size))
	if st.Deleted {
		num(1)
	} else {
		num(0)
	}
	field([]byte(st.Hash))
	num(uint64(st.Size))
	field(st.Metadata)
	num(uint64(st.Expiration.TTL))
	if st.Expiration.At.IsZero() {
		field(nil)
	} else {
		at, _ := st.Expiration.At.UTC().MarshalBinary()
		field(at)
	}
	if st.Err != nil {
		field([]byte(st.Err.Error()))
	} else {
		field(nil)
	}
	var f fingerprint
	copy(f[:], h.Sum(nil))
	return f
}

func (k *knownSet) set(rel string, st desired.State) {
	if _, ok := k.states[rel]; !ok {
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			k.dirs[d]++
		}
	}
	k.states[rel] = knownEntry{fingerprintOf(st), k.gen}
}

// same reports whether st tells the sink nothing new about rel.
func (k *knownSet) same(rel string, st desired.State) bool {
	e, ok := k.states[rel]
	return ok && e.fp == fingerprintOf(st)
}

func (k *knownSet) remove(rel string) {
	if _, ok := k.states[rel]; !ok {
		return
	}
	delete(k.states, rel)
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		if k.dirs[d]--; k.dirs[d] <= 0 {
			delete(k.dirs, d)
		}
	}
}

// below returns rel itself if known and every known path under it.
func (k *knownSet) below(rel string) []string {
	var out []string
	if rel == "" || k.dirs[rel] > 0 {
		for r := range k.states {
			if under(r, rel) {
				out = append(out, r)
			}
		}
		return out
	}
	if _, ok := k.states[rel]; ok {
		out = append(out, rel)
	}
	return out
}
