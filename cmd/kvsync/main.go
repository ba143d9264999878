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
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultMemoryLimit is the Go heap's soft limit unless GOMEMLIMIT is set.
// Without one the collector lets the heap grow with what is live, and a
// first publish of 100,000 files (about 50 MB live at its peak) would peak
// well over 100 MiB of RSS. The process's RSS is this plus what the heap
// does not cover: the binary, the state file's mapped pages (tens of MB for
// 100,000 records) and stacks. With 80 MiB that tree peaked at 90-95 MiB,
// with 72 MiB at 86-87 MiB and 15 % more time (bench/README.md). A tree
// whose live heap outgrows it (several hundred thousand files) makes the
// collector run more often, at most half a CPU by the runtime's own cap:
// set GOMEMLIMIT higher (or "off") for such trees.
const defaultMemoryLimit = 72 << 20

// defaultGCPercent replaces Go's GOGC=100 while the soft limit above caps the
// heap: a sync's live heap is small next to that cap, and collecting each
// time it doubles cost an eighth of a first publish's CPU (10,000 x 1 KiB:
// 192 -> 167 ms of CPU, medians of 8 under perf stat) on garbage the run
// soon exits with. The cap, not GOGC, decides the peak of large trees.
// Without the cap (GOMEMLIMIT set by the user) Go's default stays.
const defaultGCPercent = 400

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(defaultGCPercent)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
