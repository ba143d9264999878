//go:build unix && !linux

package beneath

import "golang.org/x/sys/unix"

// sysStat returns x/sys's Stat_t as it is: outside Linux kvsync reads no
// times from Sys(), and devIno knows this type.
func sysStat(u *unix.Stat_t) any { return u }
