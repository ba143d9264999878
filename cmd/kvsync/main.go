// Command kvsync keeps a directory tree published in a Cloudflare Workers KV
// namespace. Every subcommand lives in its own file; main only wires the
// process to run.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/kvsync/kvsync/internal/memlimit"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultMemoryLimit is the Go heap's soft limit unless GOMEMLIMIT is set.
// Without one the collector lets the heap grow to twice what is live, and a
// large first publish would peak at several times its live heap in RSS. The
// process's RSS is this plus what the heap does not cover: the binary, the
// state file's mapped pages and stacks. A live heap that outgrows the limit
// (the daemon's known set of a million files, a listing of a million keys)
// raises it to half again that heap after each collection
// (internal/memlimit), rather than make the collector run back to back.
// How the value was chosen, with the figures: bench/README.md, "Memory".
const defaultMemoryLimit = 72 << 20

// defaultGCPercent replaces Go's GOGC=100 while the soft limit above caps the
// heap: a sync's live heap is small next to that cap, and collecting each
// time it doubles spends CPU on garbage the run soon exits with. The cap,
// not GOGC, decides the peak of large trees. Without the cap (GOMEMLIMIT set
// by the user) Go's default stays. Measured in bench/README.md.
const defaultGCPercent = 400

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		memlimit.Follow(defaultMemoryLimit)
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(defaultGCPercent)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
