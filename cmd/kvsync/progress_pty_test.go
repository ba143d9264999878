//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvsync/kvsync/internal/emulator"
)

// openPTY opens a pseudo-terminal pair: the kernel's own terminal, so
// kvsync's isatty and window size checks see what they would in a shell.
func openPTY(t *testing.T, cols uint16) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminal: %v", err)
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening the pty's terminal: %v", err)
	}
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: cols}); err != nil {
		t.Fatalf("window size: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// screenLines replays what a terminal shows for out: "\r" returns to the
// line's start, ESC[K erases to its end, "\n" moves down, other text
// overwrites. It fails on any other escape sequence, which the progress
// line has no business sending.
func screenLines(t *testing.T, out []byte) []string {
	t.Helper()
	var lines []string
	var cur []rune
	col := 0
	s := []rune(string(out))
	for i := 0; i < len(s); i++ {
		switch r := s[i]; {
		case r == '\r':
			col = 0
		case r == '\n':
			lines = append(lines, string(cur))
			cur, col = nil, 0
		case r == '\033':
			if i+2 < len(s) && s[i+1] == '[' && s[i+2] == 'K' {
				cur = cur[:col]
				i += 2
				continue
			}
			t.Fatalf("unexpected escape sequence at byte %d: %q", i, string(s[i:min(i+8, len(s))]))
		default:
			if col < len(cur) {
				cur[col] = r
			} else {
				cur = append(cur, r)
			}
			col++
		}
	}
	if len(cur) > 0 {
		lines = append(lines, string(cur))
	}
	return lines
}

var progressLineRE = regexp.MustCompile(`^kvsync: (listing and scanning|\d+ of \d+ files \(\d+%\))`)

// TestProgressLineOnTerminal runs `kvsync sync` on a pseudo-terminal while
// it logs (debug level, and a held-back file) and checks the screen a person
// would see: each log record on a line of its own, whole; the progress
// line with nothing glued to it; its last state done of total with a
// percentage, a rate; and the ETA while it ran.
func TestProgressLineOnTerminal(t *testing.T) {
	// Each request answers after 150 ms, and bulk is off: the sync takes
	// a few seconds, long enough for the line to be drawn many times
	// while records are logged.
	env := newKVEnv(t, emulator.Faults{Latency: 150 * time.Millisecond})
	env.writeConfig("concurrency: 2", "bulk_threshold: 0")
	const files = 16
	for i := 0; i < files; i++ {
		mustWrite(t, filepath.Join(env.root, fmt.Sprintf("f%02d.txt", i)), fmt.Sprintf("file %d", i))
	}
	// Held back at once (bad sidecar): counted done, logged as a warning.
	mustWrite(t, filepath.Join(env.root, "bad.txt"), "x")
	mustWrite(t, filepath.Join(env.root, "bad.txt.meta.json"), "[not an object")

	master, slave := openPTY(t, 100)
	cmd := exec.Command(kvsyncBin, "sync", "--config", env.config)
	cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken, "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The child holds its own copy; reading ends (EIO) once it exits.
	slave.Close()
	var raw bytes.Buffer
	copied := make(chan error, 1)
	go func() { _, err := io.Copy(&raw, master); copied <- err }()
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		// 1: the held-back file fails the run, as it should.
		if code := exitCode(t, err); code != exitSyncFailed {
			t.Fatalf("kvsync sync exit %d, want %d\n%q", code, exitSyncFailed, raw.String())
		}
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatal("kvsync sync did not finish within 2 minutes")
	}
	if err := <-copied; err != nil && !errors.Is(err, syscall.EIO) {
		t.Fatal(err)
	}

	lines := screenLines(t, raw.Bytes())
	defer func() {
		if t.Failed() {
			t.Logf("the screen:\n%s", strings.Join(lines, "\n"))
		}
	}()
	var progressLines, logLines int
	for _, l := range lines {
		if i := strings.Index(l, "time="); i >= 0 {
			logLines++
			if i != 0 {
				t.Errorf("a log record glued to other text:\n%q", l)
			}
			if progressLineRE.MatchString(l[i:]) || strings.Count(l, "time=") > 1 {
				t.Errorf("progress or another record inside a log line:\n%q", l)
			}
			continue
		}
		if progressLineRE.MatchString(l) {
			progressLines++
			if strings.Contains(l, "level=") {
				t.Errorf("log text inside the progress line:\n%q", l)
			}
		}
	}
	if logLines == 0 {
		t.Fatalf("no log record on the screen: the test proves nothing\n%s", strings.Join(lines, "\n"))
	}
	// The log records came while the line was drawn: each of them cleared
	// it first. Without such a record the screen could be clean by luck.
	if n := strings.Count(raw.String(), clearLine+"time="); n == 0 {
		t.Fatalf("no log record was written over a drawn progress line: the sync ended too soon to test anything\n%q", raw.String())
	}
	if progressLines != 1 {
		t.Errorf("%d progress lines left on the screen, want 1 (it is redrawn in place)\n%s", progressLines, strings.Join(lines, "\n"))
	}
	final := fmt.Sprintf("kvsync: %d of %d files (100%%)", files+1, files+1)
	if !strings.Contains(strings.Join(lines, "\n"), final) {
		t.Errorf("the last progress line does not say %q\n%s", final, strings.Join(lines, "\n"))
	}
	// While it ran, the line showed a rate and a time left.
	if !regexp.MustCompile(`\d+ of 17 files \(\d+%\)  \S+ \S+  \d+ files/s  ETA \d`).Match(raw.Bytes()) {
		t.Errorf("no drawn progress line showed a rate and an ETA\n%q", raw.String())
	}
}
