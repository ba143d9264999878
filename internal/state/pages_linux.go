package state

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ReleasePages drops the state file's pages from the process's resident
// set. bbolt reads the file through a shared, read-only mapping, so a full
// sync, which looks up every key, leaves the whole file resident and
// counted in the RSS of a daemon that then sits idle. The pages stay in
// the kernel's page cache, and the next lookup maps them in again from
// there: nothing is read from disk, and nothing is written through the
// mapping (bbolt writes with pwrite), so dropping them loses nothing.
func (s *Store) ReleasePages() error { return releasePages(s.path) }

// releasePages drops the pages of every mapping of the file at path.
func releasePages(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset major:minor inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[4] != strconv.FormatUint(st.Ino, 10) || !sameDevice(fields[3], uint64(st.Dev)) {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), syscall.MADV_DONTNEED); errno != 0 {
			return fmt.Errorf("madvise %s: %w", fields[0], errno)
		}
	}
	return sc.Err()
}

// sameDevice reports whether a maps line's "major:minor" (hex) is dev.
func sameDevice(field string, dev uint64) bool {
	ma, mi, ok := strings.Cut(field, ":")
	if !ok {
		return false
	}
	major, err1 := strconv.ParseUint(ma, 16, 32)
	minor, err2 := strconv.ParseUint(mi, 16, 32)
	if err1 != nil || err2 != nil {
		return false
	}
	// Linux's encoding of dev_t (major and minor split across the bits).
	return dev == (minor&0xff)|(major&0xfff)<<8|(minor&^0xff)<<12|(major&^0xfff)<<32
}
