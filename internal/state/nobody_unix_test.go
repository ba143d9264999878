//go:build unix

package state

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// nobody is the unprivileged user root's tests run kvsync's code as.
const nobody = 65534

// openAsNobody runs this test binary as nobody to Open path, handing nobody
// the directory dir, and returns what it printed.
func openAsNobody(t *testing.T, dir, path string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The go tool keeps test binaries in a directory only root may enter.
	bin := filepath.Join(t.TempDir(), "state.test")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	// Test directories are made 0700; nobody needs to pass through them.
	for _, leaf := range []string{filepath.Dir(bin), filepath.Dir(dir)} {
		for d := leaf; d != os.TempDir() && d != filepath.Dir(d); d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), unreadableEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("running the test binary as nobody: %v\n%s", err, out)
	}
	return string(out)
}
