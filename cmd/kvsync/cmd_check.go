package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
	"github.com/kvsync/kvsync/watcher"
)

// unpublishableSkip is the skip reason of a file that exists but can never
// become a key (its name is over kvapi.MaxKeyBytes or not UTF-8). Files held back for
// their content (too large, unreadable, bad sidecar) come as states with an
// error instead; excluded files and editor debris are intentional.
const unpublishableSkip = metrics.SkipKeyInvalid

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	var cf commonFlags
	cf.register("check", fs, 0)
	if err := cf.parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(&cf)
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usageError{err}
	}
	// No credentials at all may be fine here: check runs offline, often
	// before the token is installed or where only the service can read it
	// (a systemd credential). A source that is configured but unusable (a
	// token_file that is missing or unreadable, half of a global key) is
	// what run and sync would refuse with exit 2, so check does too.
	if _, err := config.ResolveCredentials(cfg.API, os.Getenv, logger); errors.Is(err, config.ErrNoCredentials) {
		fmt.Fprintf(stdout, "warning: %v\n", err)
	} else if err != nil {
		return usageError{err}
	}
	writeBudget(stdout, cfg)
	problems := 0
	for _, s := range cfg.Syncs {
		m := metrics.New(prometheus.NewRegistry(), version)
		wo := watcherOptions(s, logger, m)
		// One scan has no use for the watcher's in-process hash cache, an
		// entry per file: a sink that records nothing keeps it empty.
		wo.Recorded = func(string) (desired.Stamp, string, bool) { return desired.Stamp{}, "", false }
		w, err := watcher.New(wo)
		if err != nil {
			return usageError{fmt.Errorf("sync %q: %w", s.Name, err)}
		}
		// Streamed: a check counts the tree's files and says what is wrong
		// with each as the scan finds it, holding none of them.
		var keys int
		var bytes int64
		complete, reason := w.Stream(ctx, desired.TriggerManual).Each(func(st desired.State) bool {
			switch {
			case st.Err != nil:
				fmt.Fprintf(stdout, "error: %s: %s\n", display(st.Path), displayErr(st.Err))
				problems++
			default:
				keys++
				bytes += st.Size
			}
			return true
		})
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sync %q: scanning %s: %w", s.Name, s.Dir, err)
		}
		if !complete {
			fmt.Fprintf(stdout, "error: sync %q: %s could not be read whole: %s\n", s.Name, display(s.Dir), display(reason))
			problems++
		}
		line := fmt.Sprintf("sync %q: %s -> namespace %s prefix %q: %d keys, %s", s.Name, s.Dir, s.NamespaceID, s.Prefix, keys, config.HumanSize(bytes))
		if n := m.Skipped(unpublishableSkip); n > 0 {
			line += fmt.Sprintf(", %.0f skipped (%s)", n, unpublishableSkip)
			problems += int(n)
		}
		fmt.Fprintln(stdout, line)
	}
	if problems > 0 {
		return fmt.Errorf("%w: %d", errCheckFailed, problems)
	}
	fmt.Fprintln(stdout, "check: ok")
	return nil
}
