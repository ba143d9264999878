package main

import (
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// TestSecurityTokenNotInCrashDump: what a crash prints is the runtime's
// goroutine dump, the same as a panic's. SIGQUIT makes a running daemon, in
// the middle of its work with the token loaded, print exactly that for every
// goroutine (GOTRACEBACK=system adds the runtime's own frames and argument
// words); the token must not be in it.
func TestSecurityTokenNotInCrashDump(t *testing.T) {
	em, err := emulator.New(emulator.Options{Token: secretToken})
	if err != nil {
		t.Fatal(err)
	}
	env := newKVEnvFrom(t, em)
	for i := 0; i < 50; i++ {
		mustWrite(t, filepath.Join(env.root, "d", strings.Repeat("f", 1+i%5)+string(rune('a'+i%26))+".txt"), "x")
	}
	env.writeConfig("", "")
	// The write of late.txt is held unanswered until the test ends, so the
	// dump is taken with a request in flight, the token in its headers,
	// every time (not when a sleep happens to land there).
	inFlight, release := make(chan struct{}), make(chan struct{})
	env.tapMu.Lock()
	env.tap = func(r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/values/late.txt") {
			close(inFlight)
			<-release
		}
	}
	env.tapMu.Unlock()
	t.Cleanup(func() { close(release) })
	d := startDaemonEnv(t, env, []string{"CLOUDFLARE_API_TOKEN=" + secretToken, "GOTRACEBACK=system"})
	d.waitReady(converge)
	mustWrite(t, filepath.Join(env.root, "late.txt"), "in flight while it dumps")
	select {
	case <-inFlight:
	case <-time.After(converge):
		t.Fatal("the write of late.txt did not reach the emulator")
	}
	d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("kvsync did not exit on SIGQUIT")
	}
	dump := d.logs.String()
	if !strings.Contains(dump, "goroutine ") || !strings.Contains(dump, "SIGQUIT") {
		t.Fatalf("test bug: no goroutine dump captured:\n%s", tail(dump, 20))
	}
	if f := leaks(dump); len(f) > 0 {
		t.Fatalf("the token appears in the crash dump (%v)", f)
	}
}
