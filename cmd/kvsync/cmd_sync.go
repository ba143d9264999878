package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/uploader"
)

func cmdSync(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sync", stderr)
	var cf commonFlags
	cf.register("sync", fs, flagsConcurrency|flagsMetrics|flagsLocal|flagsOneShot)
	dryRun := fs.Bool("dry-run", false, "show what would be written and deleted, like plan")
	if err := cf.parse(fs, args); err != nil {
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

	stopMetrics, err := a.serveSyncMetrics(ctx, &cf)
	if err != nil {
		return err
	}
	defer stopMetrics()

	start := time.Now()
	prog := startProgress(con, a.m, a.log)
	var out syncOutcome
	var listed uploader.ListInfo
	for _, u := range a.units {
		if ctx.Err() != nil {
			out.interrupted = true
			break
		}
		info, err := reachNamespace(ctx, u)
		addListInfo(&listed, info)
		if err != nil {
			if ctx.Err() != nil {
				out.interrupted = true
				break
			}
			out.reason("sync %q: the namespace cannot be reached: %s", u.cfg.Name, displayErr(err))
			out.unreached++
			if out.firstUnreached == "" {
				out.firstUnreached = out.reasons[len(out.reasons)-1]
			}
			continue
		}
		// The engine runs the scan as it syncs, so neither holds the
		// whole tree (desired.Snapshot.Walk); the progress line counts the
		// files as the walk passes them.
		rep, err := u.engine.SyncOnce(ctx, prog.track(u.watcher.Stream(ctx, desired.TriggerStartup)))
		addReport(&out.total, rep)
		if err != nil && ctx.Err() != nil {
			out.interrupted = true
			break
		}
		if rep.Incomplete != "" {
			// What could be read was published; the run still fails, since
			// part of the tree (maybe all of it) did not reach KV.
			out.reason("sync %q: %s could not be read whole: %s", u.cfg.Name, display(u.cfg.Dir), display(rep.Incomplete))
			out.incomplete++
		}
		if rep.DeletesRefused != "" && rep.Incomplete == "" {
			// KV still holds keys of files that are gone: like rclone's
			// --max-delete, a refused deletion fails the run so CI notices.
			out.reason("sync %q: deletions refused: %s", u.cfg.Name, display(rep.DeletesRefused))
			out.refused++
		}
	}
	prog.stop()
	// A file whose name cannot be a key is skipped, not held back, but it
	// still did not reach KV: the run must not look clean. The watcher's
	// log names each one.
	out.skipped = int(a.m.Skipped(unpublishableSkip))
	out.took = time.Since(start)
	out.print(stdout)
	fmt.Fprintln(stdout, listLine(listed, out.total.Drift))
	if a.local != nil {
		fmt.Fprintf(stdout, "The local namespace is kept in %s; serve it with: kvsync emulator --data %s\n", a.local.dataDir, a.local.dataDir)
	}
	return out.err()
}

// serveSyncMetrics serves /metrics while a one-shot sync runs, when
// --metrics-listen asks for it: a long first publish can then be watched.
// The config's metrics_listen is the daemon's, which may be running beside
// the sync on that very address, so it is not used. /readyz is 503
// throughout: a one-shot sync is never a ready daemon. An address that
// cannot be bound fails the sync before it starts.
func (a *app) serveSyncMetrics(ctx context.Context, cf *commonFlags) (stop func(), err error) {
	if cf.cfg.MetricsListen == "" || cf.cfg.MetricsListen == "off" {
		return func() {}, nil
	}
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if err := a.serveMetrics(mctx, func() bool { return false }); err != nil {
		cancel()
		return nil, err
	}
	return cancel, nil
}

// syncOutcome is what a sync did, for its summary and exit status.
type syncOutcome struct {
	total uploader.Report
	// skipped: files whose name cannot be a key; refused: syncs whose
	// deletions were refused; incomplete: syncs whose tree could not be
	// read whole; unreached: syncs whose namespace or root could not be
	// reached at all.
	skipped, refused, incomplete, unreached int
	interrupted                             bool
	// firstUnreached is why the first unreached namespace was: nothing
	// else logs it, and it is a setup error, so stderr says it too.
	firstUnreached string
	took           time.Duration
	// reasons are the run-level problems, in order; per-file ones come
	// from total.Failures.
	reasons []string
}

func (o *syncOutcome) reason(format string, args ...any) {
	o.reasons = append(o.reasons, fmt.Sprintf(format, args...))
}

// maxSummaryReasons bounds the reasons under the summary line: the first
// few say what went wrong; the log names every file.
const maxSummaryReasons = 5

// print writes the summary: one line of counts, then the first few reasons
// why something did not reach KV.
func (o *syncOutcome) print(w io.Writer) {
	r := o.total
	parts := []string{
		fmt.Sprintf("%d written (%s)", r.Written, config.HumanSize(r.Bytes)),
		fmt.Sprintf("%d unchanged", r.Unchanged),
		fmt.Sprintf("%d deleted", r.Deleted),
	}
	if r.Kept > 0 {
		parts = append(parts, fmt.Sprintf("%d kept", r.Kept))
	}
	parts = append(parts,
		fmt.Sprintf("%d held back", r.HeldBack),
		fmt.Sprintf("%d skipped", o.skipped),
		fmt.Sprintf("%d refused", o.refused),
		fmt.Sprintf("%d failed", r.Failed))
	line := fmt.Sprintf("kvsync: %s in %s", strings.Join(parts, ", "), o.took.Round(time.Millisecond))
	if o.interrupted {
		line += " (interrupted)"
	}
	fmt.Fprintln(w, line)
	reasons := slices.Clone(o.reasons)
	if o.skipped > 0 {
		reasons = append(reasons, fmt.Sprintf("skipped: %d files whose name cannot be a key (over %d bytes or not UTF-8); the log names them", o.skipped, kvapi.MaxKeyBytes))
	}
	for _, f := range r.Failures {
		what := "failed"
		if f.HeldBack {
			what = "held back"
		}
		reasons = append(reasons, fmt.Sprintf("%s: %s (%s): %s", what, display(f.Key), display(f.Path), displayErr(f.Err)))
	}
	more := r.Failed + r.HeldBack - len(r.Failures) // Failures is capped
	if len(reasons) > maxSummaryReasons {
		more += len(reasons) - maxSummaryReasons
		reasons = reasons[:maxSummaryReasons]
	}
	for _, s := range reasons {
		fmt.Fprintf(w, "  %s\n", strings.ReplaceAll(s, "\n", "\n    "))
	}
	if more > 0 {
		fmt.Fprintf(w, "  and %d more; the log names each\n", more)
	}
}

// err is the run's error: nil only when the whole tree reached KV.
func (o *syncOutcome) err() error {
	r := o.total
	var what []string
	for _, c := range []struct {
		n    int
		what string
	}{
		{o.unreached, "not reached"}, {o.incomplete, "not read whole"}, {r.Failed, "failed"}, {r.HeldBack, "held back"},
		{o.skipped, "skipped"}, {o.refused, "with deletions refused"},
	} {
		if c.n > 0 {
			what = append(what, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	switch {
	case o.interrupted:
		return errInterrupted
	case o.firstUnreached != "":
		return fmt.Errorf("%w: %s; %s", errSyncFailed, strings.Join(what, ", "), o.firstUnreached)
	case len(what) > 0:
		return fmt.Errorf("%w: %s (see the summary on stdout)", errSyncFailed, strings.Join(what, ", "))
	}
	return nil
}

func cmdPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("plan", stderr)
	var cf commonFlags
	cf.register("plan", fs, flagsLocal|flagsOneShot)
	if err := cf.parse(fs, args); err != nil {
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
		// The scan streams into the plan, which merges it with the store
		// and the listing as a sync does, so a plan holds no more of the
		// tree than a sync (README, "Memory"), besides the keys it lists.
		rep, err := u.engine.Plan(ctx, u.watcher.Stream(ctx, desired.TriggerManual))
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("sync %q: scanning %s: %w", u.cfg.Name, u.cfg.Dir, cerr)
		}
		if err != nil {
			return fmt.Errorf("sync %q: %w", u.cfg.Name, err)
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
	// What a sync would hold back is part of the plan, beside what it
	// would write and delete.
	for _, f := range total.Failures {
		fmt.Fprintf(stdout, "hold   %s (%s): %s\n", display(f.Key), display(f.Path), displayErr(f.Err))
	}
	fmt.Fprintf(stdout, "plan: %d to write (%s), %d to delete, %d unchanged, %d held back\n",
		len(total.WouldWrite), config.HumanSize(total.Bytes), len(total.WouldDelete), total.Unchanged, total.HeldBack)
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
