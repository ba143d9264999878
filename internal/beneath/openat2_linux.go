package beneath

import "golang.org/x/sys/unix"

// dirFlags opens a directory that only anchors lookups: O_PATH needs
// search permission, not read permission, as a path lookup would.
const dirFlags = unix.O_PATH

// openat2 opens rel beneath dirfd with RESOLVE_BENEATH (no "..", absolute
// path or symlink out) and RESOLVE_NO_SYMLINKS (no symlink at all, /proc's
// magic links included). ok is false when openat2 is not to be used: the
// caller walks instead. ENOSYS (a kernel before 5.6) turns it off for
// good. EPERM may be a seccomp filter that does not know openat2 (some
// container runtimes) or a real refusal: the walk tells which, and only
// if it then succeeds is openat2 turned off.
func openat2(dirfd int, rel string, flags int) (int, error) {
	if noOpenat2.Load() {
		return -1, errNoOpenat2
	}
	how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS}
	fd, err := retry(func() (int, error) { return unix.Openat2(dirfd, rel, &how) })
	// EAGAIN: a rename or mount raced with a RESOLVE_BENEATH lookup, which
	// the kernel refuses rather than guess; looking up again is safe.
	for i := 0; err == unix.EAGAIN && i < 16; i++ {
		fd, err = retry(func() (int, error) { return unix.Openat2(dirfd, rel, &how) })
	}
	switch err {
	case unix.ENOSYS:
		noOpenat2.Store(true)
		return -1, errNoOpenat2
	case unix.EPERM:
		wfd, werr := walk(dirfd, rel, flags|unix.O_NOFOLLOW)
		if werr == nil {
			noOpenat2.Store(true)
		}
		return wfd, werr
	}
	return fd, err
}
