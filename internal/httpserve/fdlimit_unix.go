//go:build unix

package httpserve

import (
	"math"

	"golang.org/x/sys/unix"
)

// fdLimit is the soft RLIMIT_NOFILE, 0 if it cannot be read. (The Go runtime
// raises the soft limit to the hard one at start, so this is the hard limit
// unless the process lowered it.)
func fdLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return 0
	}
	if rl.Cur > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(rl.Cur)
}
