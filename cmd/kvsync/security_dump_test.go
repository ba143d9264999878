package main

import (
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
	em, err := emulator.New(emulator.Options{Token: secretToken, Faults: emulator.Faults{Latency: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	env := newKVEnvFrom(t, em)
	for i := 0; i < 50; i++ {
		mustWrite(t, filepath.Join(env.root, "d", strings.Repeat("f", 1+i%5)+string(rune('a'+i%26))+".txt"), "x")
	}
	env.writeConfig("", "")
	d := startDaemonEnv(t, env, []string{"CLOUDFLARE_API_TOKEN=" + secretToken, "GOTRACEBACK=system"})
	d.waitReady(converge)
	mustWrite(t, filepath.Join(env.root, "late.txt"), "in flight while it dumps")
	time.Sleep(150 * time.Millisecond)
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
