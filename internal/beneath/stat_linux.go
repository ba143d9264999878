package beneath

import (
	"reflect"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysStat returns x/sys's Stat_t as the syscall package's, which is what
// os.Lstat's FileInfo holds and what kvsync's readers of Sys() expect.
// Where both are the kernel's struct stat field for field (amd64 and
// arm64, among others), the same memory is viewed as the other type
// instead of copied: a scan makes one of these per file, and the copy
// was a second allocation of each.
func sysStat(u *unix.Stat_t) *syscall.Stat_t {
	if statLayoutsMatch {
		return (*syscall.Stat_t)(unsafe.Pointer(u))
	}
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

// statLayoutsMatch: unix.Stat_t and syscall.Stat_t have the same fields at
// the same offsets with the same sizes and kinds on this architecture.
var statLayoutsMatch = len(statLayoutDiff()) == 0

// statLayoutDiff lists how the two Stat_t types differ; none when the one
// may be viewed as the other.
func statLayoutDiff() []string {
	u, s := reflect.TypeOf(unix.Stat_t{}), reflect.TypeOf(syscall.Stat_t{})
	if u.Size() != s.Size() || u.NumField() != s.NumField() {
		return []string{"unix.Stat_t is " + u.String() + " of another size or field count than " + s.String()}
	}
	var diff []string
	for i := range u.NumField() {
		uf, sf := u.Field(i), s.Field(i)
		sameName := uf.Name == sf.Name || padding(uf.Name) && padding(sf.Name)
		if !sameName || uf.Offset != sf.Offset || uf.Type.Size() != sf.Type.Size() || uf.Type.Kind() != sf.Type.Kind() {
			diff = append(diff, "field "+uf.Name+" / "+sf.Name)
		}
	}
	return diff
}

// padding reports whether a Stat_t field is padding, which the two packages
// name differently.
func padding(name string) bool { return name == "_" || strings.HasPrefix(name, "X__") }
