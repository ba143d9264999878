package watcher

import (
	"path"

	"github.com/kvsync/kvsync/internal/desired"
)

// knownSet holds the last emitted state per relative path and, per
// directory, how many of them lie below it, so a change to one file does
// not have to look at every key to find what its path used to hold.
type knownSet struct {
	states map[string]desired.State
	dirs   map[string]int
}

func (k *knownSet) set(rel string, st desired.State) {
	if _, ok := k.states[rel]; !ok {
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			k.dirs[d]++
		}
	}
	k.states[rel] = st
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
