//go:build !linux

package watcher

import (
	"context"
	"os"
)

// readDirStat lists the directory at abs in name order and lstats the
// entries the walk needs (wantStat), by path: the portable way. beforeStat,
// when set, runs between the listing and the stats.
func readDirStat(ctx context.Context, abs string, beforeStat func()) ([]dirEntry, error) {
	f, err := os.Open(abs)
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
		e.info, e.err = os.Lstat(abs + string(os.PathSeparator) + e.name)
	}
	return entries, nil
}
