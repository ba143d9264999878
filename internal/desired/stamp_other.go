//go:build !linux

package desired

import "io/fs"

// StampOf reports no stamp where ctime and inode are not at hand, so every
// file is read: size and mtime alone never prove content unchanged.
func StampOf(fs.FileInfo) (Stamp, bool) { return Stamp{}, false }

// StampOfSys reports no stamp; see StampOf.
func StampOfSys(any) (Stamp, bool) { return Stamp{}, false }
