package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/uploader"
)

func cmdSync(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sync", stderr)
	var cf commonFlags
	cf.register("sync", fs)
	cf.registerTrustState(fs)
	dryRun := fs.Bool("dry-run", false, "show what would be written and deleted, like plan")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dryRun {
		return plan(ctx, &cf, stdout, stderr)
	}
	// The logger and the progress line share the terminal (console).
	con := newConsole(stderr, os.Getenv)
	a, err := newApp(ctx, &cf, con, false)
	if err != nil {
		return err
	}
	defer a.close()

	start := time.Now()
	prog := startProgress(con, a.m, a.log)
	var total uploader.Report
	var runErr error
	var listed uploader.ListInfo
	for _, u := range a.units {
		info, err := reachNamespace(ctx, u)
		addListInfo(&listed, info)
		if err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("%w: sync %q: %w", errSyncFailed, u.cfg.Name, err))
			continue
		}
		// The engine runs the scan as it syncs, so neither holds the
		// whole tree (desired.Snapshot.Walk); the progress line counts the
		// files as the walk passes them.
		rep, err := u.engine.SyncOnce(ctx, prog.track(u.watcher.Stream(ctx, desired.TriggerStartup)))
		addReport(&total, rep)
		if err != nil && ctx.Err() != nil {
			runErr = errors.Join(runErr, err)
			break
		}
		if rep.Incomplete != "" {
			// What could be read was published; the run still fails, since
			// part of the tree (maybe all of it) did not reach KV.
			runErr = errors.Join(runErr, fmt.Errorf("%w: sync %q: %s could not be read whole: %s", errSyncFailed, u.cfg.Name, u.cfg.Dir, rep.Incomplete))
		}
		if rep.DeletesRefused != "" && rep.Incomplete == "" {
			// KV still holds keys of files that are gone: like rclone's
			// --max-delete, a refused deletion fails the run so CI notices.
			runErr = errors.Join(runErr, fmt.Errorf("%w: sync %q: deletes refused: %s", errSyncFailed, u.cfg.Name, rep.DeletesRefused))
		}
	}
	prog.stop()
	fmt.Fprintln(stdout, summaryLine(total, time.Since(start)))
	fmt.Fprintln(stdout, listLine(listed, total.Drift))
	for _, f := range total.Failures {
		what := "failed"
		if f.HeldBack {
			what = "held back"
		}
		fmt.Fprintf(stderr, "%s: %s (%s): %s\n", what, display(f.Key), display(f.Path), displayErr(f.Err))
	}
	if a.local != nil {
		fmt.Fprintf(stdout, "The local namespace is kept in %s; serve it with: kvsync emulator --data %s\n", a.local.dataDir, a.local.dataDir)
	}
	if runErr != nil {
		return runErr
	}
	// A file whose name cannot be a key is skipped, not held back, but it
	// still did not reach KV: the run must not look clean.
	unpublishable := int(a.m.Skipped(unpublishableSkip))
	if total.Failed > 0 || total.HeldBack > 0 || unpublishable > 0 {
		return fmt.Errorf("%w: %d failed, %d held back, %d with no valid key name", errSyncFailed, total.Failed, total.HeldBack, unpublishable)
	}
	return nil
}

func cmdPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("plan", stderr)
	var cf commonFlags
	cf.register("plan", fs)
	cf.registerTrustState(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return plan(ctx, &cf, stdout, stderr)
}

func plan(ctx context.Context, cf *commonFlags, stdout, stderr io.Writer) error {
	a, err := newApp(ctx, cf, stderr, true)
	if err != nil {
		return err
	}
	defer a.close()
	var total uploader.Report
	for _, u := range a.units {
		if _, err := reachNamespace(ctx, u); err != nil {
			return fmt.Errorf("sync %q: %w", u.cfg.Name, err)
		}
		snap, err := u.watcher.Scan(ctx, desired.TriggerManual)
		if err != nil {
			return fmt.Errorf("sync %q: scanning %s: %w", u.cfg.Name, u.cfg.Dir, err)
		}
		rep, err := u.engine.Plan(ctx, snap)
		if err != nil && ctx.Err() != nil {
			return err
		}
		for _, k := range rep.WouldWrite {
			fmt.Fprintf(stdout, "write  %s\n", display(k))
		}
		for _, k := range rep.WouldDelete {
			fmt.Fprintf(stdout, "delete %s\n", display(k))
		}
		if rep.DeletesRefused != "" {
			fmt.Fprintf(stdout, "# sync %q: no deletes: %s\n", u.cfg.Name, rep.DeletesRefused)
		}
		addReport(&total, rep)
	}
	for _, f := range total.Failures {
		fmt.Fprintf(stderr, "held back: %s (%s): %s\n", display(f.Key), display(f.Path), displayErr(f.Err))
	}
	fmt.Fprintf(stdout, "plan: %d to write, %d to delete, %d unchanged, %d held back\n",
		len(total.WouldWrite), len(total.WouldDelete), total.Unchanged, total.HeldBack)
	return nil
}

// reachNamespace lists the namespace for the sync about to run, or, when
// it trusts its store, proves with one request that it can be reached:
// a sync with nothing to write must fail on a bad token too.
func reachNamespace(ctx context.Context, u *unit) (uploader.ListInfo, error) {
	info, err := u.engine.Prepare(ctx)
	if err == nil && info.Skipped {
		err = u.engine.Probe(ctx)
		info.Requests = 1
	}
	return info, err
}

func addListInfo(total *uploader.ListInfo, i uploader.ListInfo) {
	total.Skipped = total.Skipped || i.Skipped
	total.Keys += i.Keys
	total.Owned += i.Owned
	total.Requests += i.Requests
}

// listLine says what the sync compared with: the namespace's listing, or
// the state store it was told to trust.
func listLine(l uploader.ListInfo, drift int) string {
	if l.Skipped && l.Keys == 0 {
		return "kvsync: listing skipped (--trust-state): compared with the local state store"
	}
	line := fmt.Sprintf("kvsync: listed %d keys under the prefix (%d written by this sync) in %d requests", l.Keys, l.Owned, l.Requests)
	if drift > 0 {
		line += fmt.Sprintf("; %d keys were deleted or overwritten behind kvsync's back and written again", drift)
	}
	return line
}

func addReport(total *uploader.Report, r uploader.Report) {
	total.Written += r.Written
	total.Unchanged += r.Unchanged
	total.Deleted += r.Deleted
	total.Kept += r.Kept
	total.Failed += r.Failed
	total.HeldBack += r.HeldBack
	total.Bytes += r.Bytes
	total.Drift += r.Drift
	total.WouldWrite = append(total.WouldWrite, r.WouldWrite...)
	total.WouldDelete = append(total.WouldDelete, r.WouldDelete...)
	total.Failures = append(total.Failures, r.Failures...)
}

func summaryLine(r uploader.Report, took time.Duration) string {
	parts := []string{
		fmt.Sprintf("%d written (%s)", r.Written, config.HumanSize(r.Bytes)),
		fmt.Sprintf("%d unchanged", r.Unchanged),
		fmt.Sprintf("%d deleted", r.Deleted),
	}
	if r.Kept > 0 {
		parts = append(parts, fmt.Sprintf("%d kept", r.Kept))
	}
	parts = append(parts, fmt.Sprintf("%d failed", r.Failed))
	if r.HeldBack > 0 {
		parts = append(parts, fmt.Sprintf("%d held back", r.HeldBack))
	}
	return fmt.Sprintf("kvsync: %s in %s", strings.Join(parts, ", "), took.Round(time.Millisecond))
}
