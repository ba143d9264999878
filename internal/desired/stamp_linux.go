package desired

import (
	"io/fs"
	"syscall"
)

// StampOf returns the stamp of a file's stat.
func StampOf(fi fs.FileInfo) (Stamp, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Stamp{}, false
	}
	return stampOfStat(st), true
}

func stampOfStat(st *syscall.Stat_t) Stamp {
	return Stamp{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}
}

// StampOfSys returns the stamp of a stat the caller made itself
// (*syscall.Stat_t), so one fstat can both check a descriptor and stamp it.
func StampOfSys(sys any) (Stamp, bool) {
	st, ok := sys.(*syscall.Stat_t)
	if !ok {
		return Stamp{}, false
	}
	return stampOfStat(st), true
}
