//go:build !linux

package watcher

import (
	"context"

	"github.com/kvsync/kvsync/internal/beneath"
)

// readDirStat lists the directory rel beneath root (abs, for messages) in
// key order (keyOrder) and lstats the entries the walk needs (wantStat), each
// beneath the root: the portable way. beforeStat, when set, runs between
// the listing and the stats.
func readDirStat(ctx context.Context, root *beneath.Root, rel, abs string, beforeStat func()) ([]dirEntry, error) {
	f, err := root.OpenDir(rel)
	if err != nil {
		return nil, err
	}
	entries, err := readNames(ctx, f)
	f.Close()
	if err != nil {
		return nil, err
	}
	if beforeStat != nil {
		beforeStat()
	}
	n := 0
	for i := range entries {
		if !wantStat(entries, i) {
			continue
		}
		if n++; n%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		e := &entries[i]
		e.info, e.err = root.Lstat(joinRel(rel, e.name))
	}
	return entries, nil
}
