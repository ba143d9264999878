package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Exit codes, so scripts and CI can tell a failed file from a broken setup.
// README's "Exit status" table lists them; TestExitCodes has a case for
// each.
const (
	exitOK          = 0
	exitSyncFailed  = 1 // the run finished but not everything reached KV, or check found a problem in the tree
	exitUsage       = 2 // bad flags, bad config, missing or unreadable credentials
	exitRuntimeFail = 3 // the process could not start its work: state store locked or unwritable, an address in use
	exitInterrupted = 4 // SIGINT/SIGTERM stopped it with work left undone
)

// errInterrupted marks a run stopped by a signal before its work was done;
// what is left is picked up by the next run.
var errInterrupted = errors.New("stopped by a signal before all work was done; the next run picks up the rest")

// usageError marks errors that are the caller's input, so they exit with exitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"run", "sync, then keep watching and syncing every change (the daemon)", cmdRun},
		{"sync", "one full sync, then exit (for CI); non-zero exit if any file failed", cmdSync},
		{"plan", "show what a sync would write and delete, writing nothing", cmdPlan},
		{"check", "validate the config and the tree offline: keys, sidecars, sizes, expirations", cmdCheck},
		{"emulator", "serve a local Workers KV API emulator", cmdEmulator},
		{"version", "print the version", cmdVersion},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		printUsage(stdout)
		return exitOK
	case "help":
		// "kvsync help sync" is "kvsync sync -h"; "kvsync help" the list.
		if len(args) == 1 {
			printUsage(stdout)
			return exitOK
		}
		args = []string{args[1], "-h"}
	case "-version", "--version":
		args = []string{"version"}
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var help helpRequest
		switch {
		case err == nil:
			return exitOK
		case errors.As(err, &help):
			// Asked for: the flags go to stdout, like any output asked for.
			help.fs.SetOutput(stdout)
			help.fs.Usage()
			return exitOK
		case errors.Is(err, errInterrupted):
			fmt.Fprintf(stderr, "kvsync %s: %s\n", c.name, displayErr(err))
			return exitInterrupted
		case errors.Is(err, errSyncFailed), errors.Is(err, errCheckFailed):
			fmt.Fprintf(stderr, "kvsync %s: %s\n", c.name, displayErr(err))
			return exitSyncFailed
		case errors.As(err, new(usageError)):
			fmt.Fprintf(stderr, "kvsync %s: %s\n", c.name, displayErr(err))
			if errors.As(err, new(flagError)) {
				fmt.Fprintf(stderr, "Run 'kvsync %s -h' for its flags.\n", c.name)
			}
			return exitUsage
		default:
			fmt.Fprintf(stderr, "kvsync %s: %s\n", c.name, displayErr(err))
			return exitRuntimeFail
		}
	}
	fmt.Fprintf(stderr, "kvsync: unknown command %q\n\n", args[0])
	printUsage(stderr)
	return exitUsage
}

func printUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("kvsync keeps a directory tree published in a Cloudflare Workers KV namespace.\n\nUsage:\n  kvsync <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'kvsync <command> -h' for a command's flags.\n")
	io.WriteString(w, b.String())
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints nothing itself: run prints its flags to stdout when asked (-h)
// and the error alone, with a pointer to -h, when the flags are wrong.
func newFlagSet(name string, _ io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kvsync "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: kvsync %s [flags]\n\nFlags:\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// helpRequest is -h or --help on a command's flags.
type helpRequest struct{ fs *flag.FlagSet }

func (helpRequest) Error() string { return "help requested" }

// flagError is a flag the command does not take, or a bad value for one.
type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }
func (e flagError) Unwrap() error { return e.err }

// parseFlags parses and turns a flag error into a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return helpRequest{fs}
		}
		return usageError{flagError{err}}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}
