package beneath

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// sysStat converts x/sys's Stat_t into the syscall package's, which is
// what os.Lstat's FileInfo holds and what kvsync's readers of Sys() expect.
func sysStat(u *unix.Stat_t) *syscall.Stat_t {
	return &syscall.Stat_t{
		Dev:     u.Dev,
		Ino:     u.Ino,
		Nlink:   u.Nlink,
		Mode:    u.Mode,
		Uid:     u.Uid,
		Gid:     u.Gid,
		Rdev:    u.Rdev,
		Size:    u.Size,
		Blksize: u.Blksize,
		Blocks:  u.Blocks,
		Atim:    syscall.Timespec(u.Atim),
		Mtim:    syscall.Timespec(u.Mtim),
		Ctim:    syscall.Timespec(u.Ctim),
	}
}
