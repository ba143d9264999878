package beneath

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStatLayoutsMatch: on the architectures kvsync ships for, sysStat
// views the stat in place (no copy); on every one, it says what the stat says.
func TestStatLayoutsMatch(t *testing.T) {
	if d := statLayoutDiff(); (runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64") && len(d) > 0 {
		t.Errorf("unix.Stat_t and syscall.Stat_t differ on %s: %v", runtime.GOARCH, d)
	}
	var st unix.Stat_t
	if err := unix.Lstat(".", &st); err != nil {
		t.Fatal(err)
	}
	for _, inPlace := range []bool{statLayoutsMatch, false} {
		t.Run(map[bool]string{true: "viewed", false: "copied"}[inPlace], func(t *testing.T) {
			defer func(was bool) { statLayoutsMatch = was }(statLayoutsMatch)
			statLayoutsMatch = inPlace
			sys := sysStat(&st)
			if uint64(sys.Dev) != uint64(st.Dev) || uint64(sys.Ino) != uint64(st.Ino) || int64(sys.Size) != int64(st.Size) ||
				sys.Mode != st.Mode || sys.Mtim.Nano() != st.Mtim.Nano() || sys.Ctim.Nano() != st.Ctim.Nano() {
				t.Errorf("sysStat(%+v) = %+v", st, *sys)
			}
		})
	}
}
