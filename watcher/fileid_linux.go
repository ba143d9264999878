package watcher

import (
	"io/fs"
	"syscall"
)

// fileIDOf returns the identity the hash cache trusts: device, inode, size,
// mtime and ctime. ctime cannot be set from user space, so a rewrite that
// restores size and mtime (cp -p, tar, CI checkouts) still changes it.
func fileIDOf(fi fs.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{
		dev:   uint64(st.Dev),
		ino:   st.Ino,
		size:  st.Size,
		mtime: st.Mtim.Nano(),
		ctime: st.Ctim.Nano(),
	}, true
}
