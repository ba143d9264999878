//go:build unix && !linux

package beneath

import "golang.org/x/sys/unix"

// dirFlags opens a directory that anchors lookups; without O_PATH that
// takes read permission on it.
const dirFlags = unix.O_RDONLY

// openat2 is Linux's; elsewhere every path is walked.
func openat2(int, string, int) (int, error) { return -1, errNoOpenat2 }
