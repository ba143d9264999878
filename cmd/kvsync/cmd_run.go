package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	var cf commonFlags
	cf.register("run", fs, flagsConcurrency|flagsMetrics|flagsLocal|flagsDrain)
	if err := cf.parse(fs, args); err != nil {
		return err
	}
	a, err := newApp(ctx, &cf, stderr, false)
	if err != nil {
		return err
	}
	defer a.close()
	if a.local != nil {
		ns := fmt.Sprintf("%s/accounts/%s/storage/kv/namespaces/%s", a.local.baseURL, a.cfg.API.AccountID, a.cfg.Syncs[0].NamespaceID)
		fmt.Fprintf(stdout, "kvsync: publishing into the local emulator at %s\n  list the keys: curl -H 'Authorization: Bearer %s' %s/keys\n  read one:      curl -H 'Authorization: Bearer %s' %s/values/<key, percent-encoded>\n",
			a.local.baseURL, localToken, ns, localToken, ns)
	}

	var ready readiness
	metricsCtx, stopMetrics := context.WithCancel(context.WithoutCancel(ctx))
	defer stopMetrics()
	if err := a.serveMetrics(metricsCtx, ready.ok.Load); err != nil {
		return err
	}

	if a.cfg.LeaderElection.Enabled {
		if a.elect, err = a.newElection(); err != nil {
			return err
		}
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	sup := &supervisor{app: a, running: map[string]*runningUnit{}, fatal: make(chan error, 1)}
	for _, u := range a.units {
		sup.start(u)
	}
	go func() {
		if err := sup.waitInitial(ctx); err != nil {
			return
		}
		// The initial sync's snapshots and batches are garbage now, but an
		// idle daemon allocates too little for the collector to run for
		// minutes: collect once and hand the pages back, so the steady RSS
		// is what watching the tree keeps, from the start.
		debug.FreeOSMemory()
		if err := sup.waitAccepted(ctx, time.Second); err != nil {
			return
		}
		ready.set()
		a.log.Info("initial sync done; watching for changes", "syncs", len(a.units))
		if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
			a.log.Warn("systemd readiness notification failed", "err", err)
		}
	}()

	var watchdog <-chan time.Time
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		watchdog = t.C
	}

	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping: finishing in-flight work", "timeout", cf.drain)
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			drainCtx, cancel := a.drainContext(cf.drain)
			err := sup.stopAll(drainCtx)
			cancel()
			if err != nil {
				// Not a clean stop: exitInterrupted, which the systemd
				// unit's SuccessExitStatus= accepts, since the next start
				// writes what is left. run prints the error once.
				return fmt.Errorf("%w: %w", errInterrupted, err)
			}
			return nil
		case err := <-sup.fatal:
			// The election cannot go on (the Lease is forbidden): stop
			// rather than stand by for ever without saying why.
			a.log.Error("stopping: leader election failed", "err", err)
			drainCtx, cancel := context.WithTimeout(context.Background(), cf.drain)
			sup.stopAll(drainCtx) //nolint:errcheck // the election's error is the one to report
			cancel()
			return err
		case <-hup:
			daemon.SdNotify(false, daemon.SdNotifyReloading)
			sup.reload(ctx, &cf)
			daemon.SdNotify(false, daemon.SdNotifyReady)
		case <-watchdog:
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

// readiness is what /readyz answers and what makes the daemon send
// systemd's READY=1: false until the run loop sets it, then true for good.
// The run loop sets it once the initial full sync of every sync finished
// and the API accepted every key it was sent (waitAccepted); a standby that
// is not to write may set it too.
type readiness struct{ ok atomic.Bool }

func (r *readiness) set() { r.ok.Store(true) }

// drainContext bounds the drain on stop by timeout, and ends it early when a
// 429 pause outlasts it: no request can be sent before the pause is over,
// so waiting would only delay the stop. What is not written is marked
// pending in the state store and written by the next start.
func (a *app) drainContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	deadline, _ := ctx.Deadline()
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if until := a.limiter.PausedUntil(); until.After(deadline) {
				a.log.Warn("stopping without waiting: the API paused requests past the drain timeout", "paused_until", until.Format(time.RFC3339))
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ctx, cancel
}

// serveMetrics starts /metrics, /healthz and /readyz unless disabled, and
// fails at once if the address cannot be bound.
func (a *app) serveMetrics(ctx context.Context, ready func() bool) error {
	addr := a.cfg.MetricsListen
	if addr == "" || addr == "off" {
		return nil
	}
	bound := make(chan net.Addr, 1)
	failed := make(chan error, 1)
	go func() {
		failed <- metrics.Serve(ctx, metrics.ServerOptions{Addr: addr, Gatherer: a.reg, Ready: ready, Logger: a.log}, func(na net.Addr) { bound <- na })
	}()
	select {
	case na := <-bound:
		a.log.Info("metrics serving", "addr", na.String())
		return nil
	case err := <-failed:
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
}

// supervisor runs one watcher and one engine per sync and replaces them on
// reload.
type supervisor struct {
	app     *app
	mu      sync.Mutex
	running map[string]*runningUnit
	// fatal receives the error of an election that cannot go on.
	fatal chan error
}

type runningUnit struct {
	u             *unit
	stopWatcher   context.CancelFunc
	stopEngine    context.CancelFunc
	watcherDone   chan error
	engineDone    chan error
	firstSnapshot chan struct{}
	// Under leader_election (leader.go): the watcher's context, and the
	// election's stop and result.
	watcherCtx   context.Context
	stopElection context.CancelFunc
	electionDone chan error
}

// firstSnapshotSink tells readiness when the initial scan reached the engine.
// Past it, the engine is writing records, so later scans must compare.
type firstSnapshotSink struct {
	desired.Sink
	once sync.Once
	ch   chan struct{}
	u    *unit
	log  *slog.Logger
	// standby, under leader election, tells whether the sink drops what it
	// is handed (no term is running): then nothing was queued.
	standby func() bool
}

// Changed hands a debounced batch of changes to the engine and says so in
// one line: an operator tailing the log sees each batch, not each file
// (those are at debug level; failures have lines of their own).
func (f *firstSnapshotSink) Changed(states []desired.State) {
	f.Sink.Changed(states)
	var changed, deleted, held int
	for _, st := range states {
		switch {
		case st.Deleted:
			deleted++
		case st.Err != nil:
			held++
		default:
			changed++
		}
	}
	if f.standby != nil && f.standby() {
		f.log.Debug("changes seen while standing by: the leader publishes them", "sync", f.u.cfg.Name, "changed", changed, "deleted", deleted, "held_back", held)
		return
	}
	f.log.Info("changes queued", "sync", f.u.cfg.Name, "changed", changed, "deleted", deleted, "held_back", held)
}

func (f *firstSnapshotSink) Snapshot(s desired.Snapshot) {
	f.Sink.Snapshot(s)
	f.once.Do(func() {
		f.u.recordsExist.Store(true)
		close(f.ch)
	})
}

func (s *supervisor) start(u *unit) {
	ectx, stopEngine := context.WithCancel(context.Background())
	wctx, stopWatcher := context.WithCancel(context.Background())
	r := &runningUnit{
		u: u, stopWatcher: stopWatcher, stopEngine: stopEngine,
		watcherDone: make(chan error, 1), engineDone: make(chan error, 1),
		firstSnapshot: make(chan struct{}), watcherCtx: wctx,
	}
	if s.app.elect != nil {
		stopEngine()
		s.startElected(u, r)
		s.mu.Lock()
		s.running[u.cfg.Name] = r
		s.mu.Unlock()
		return
	}
	go func() { r.engineDone <- u.engine.Run(ectx) }()
	sink := &firstSnapshotSink{Sink: u.engine, ch: r.firstSnapshot, u: u, log: s.app.log}
	go func() {
		// A fresh store: the startup scan must know what the namespace
		// holds, so that it hashes the files already published.
		if info, err := u.engine.Prepare(wctx); err != nil {
			s.app.log.Error("listing the namespace failed; the initial sync compares with the state store alone", "sync", u.cfg.Name, "err", err)
		} else if !info.Skipped {
			s.app.log.Info("listed the namespace", "sync", u.cfg.Name, "keys", info.Keys, "written_by_this_sync", info.Owned, "requests", info.Requests)
		}
		go s.listEvery(wctx, u)
		err := u.watcher.Run(wctx, sink)
		if err != nil {
			s.app.log.Error("watcher stopped", "sync", u.cfg.Name, "err", err)
		}
		r.watcherDone <- err
	}()
	s.mu.Lock()
	s.running[u.cfg.Name] = r
	s.mu.Unlock()
}

// listEvery asks for a full sync each list_interval when rescans alone
// would come less often, since only a full sync lists (see
// uploader.Options.ListInterval).
func (s *supervisor) listEvery(ctx context.Context, u *unit) {
	every, rescan := u.cfg.ListInterval, u.cfg.RescanInterval
	if !u.cfg.RecordInMetadata || every <= 0 || rescan > 0 && rescan <= every {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			u.watcher.Rescan(desired.TriggerPeriodic)
		}
	}
}

func (s *supervisor) waitInitial(ctx context.Context) error {
	s.mu.Lock()
	units := make([]*runningUnit, 0, len(s.running))
	for _, r := range s.running {
		units = append(units, r)
	}
	s.mu.Unlock()
	for _, r := range units {
		select {
		case <-r.firstSnapshot:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.stopElection != nil {
			// A standby is ready once it watches; a leader's term runs
			// its own full sync.
			continue
		}
		if err := r.u.engine.WaitIdle(ctx); err != nil {
			return err
		}
	}
	return nil
}

// waitAccepted returns once no engine holds a key that failed: the API
// accepted every key the initial sync sent (or, after a failure, every key
// has since been written), polling every interval; or with ctx's error.
func (s *supervisor) waitAccepted(ctx context.Context, interval time.Duration) error {
	logged := false
	for {
		s.mu.Lock()
		failing := 0
		for _, r := range s.running {
			failing += r.u.engine.Failing()
		}
		s.mu.Unlock()
		if failing == 0 {
			return nil
		}
		if !logged {
			s.app.log.Error("the initial sync left keys the API did not accept; not ready until they are written", "failing_keys", failing)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// stop ends a unit's watcher first, so nothing new arrives, then lets its
// engine finish what is queued.
func (s *supervisor) stop(ctx context.Context, r *runningUnit) error {
	if r.stopElection != nil {
		// Under election nothing is flushed: writing stops, then the
		// Lease is released at once (leader.Run), and never taken
		// again by this unit; the next leader's full sync covers the
		// changes not yet written.
		r.stopElection()
		err := <-r.electionDone
		r.stopWatcher()
		<-r.watcherDone
		return err
	}
	r.stopWatcher()
	<-r.watcherDone
	err := r.u.engine.Drain(ctx)
	r.stopEngine()
	<-r.engineDone
	return err
}

func (s *supervisor) stopAll(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for name, r := range s.running {
		if err := s.stop(ctx, r); err != nil {
			errs = append(errs, fmt.Errorf("sync %q: %w", name, err))
		}
		delete(s.running, name)
	}
	return errors.Join(errs...)
}

// reload re-reads the config. Syncs whose settings did not change keep
// running untouched (and rescan); changed ones finish their queued work
// before their replacement starts, so no queued change is lost and no key is
// ever written by two engines at once. A config that does not load leaves
// everything as it was.
func (s *supervisor) reload(ctx context.Context, cf *commonFlags) {
	log := s.app.log
	cfg, err := loadConfig(cf)
	if err != nil {
		log.Error("reload: config not applied; still running the previous one", "err", err)
		return
	}
	if s.app.local != nil {
		cfg.API.BaseURL = s.app.cfg.API.BaseURL
	}
	if !reflect.DeepEqual(cfg.API, s.app.cfg.API) || cfg.StateDir != s.app.cfg.StateDir || cfg.MetricsListen != s.app.cfg.MetricsListen ||
		!reflect.DeepEqual(cfg.LeaderElection, s.app.cfg.LeaderElection) {
		log.Warn("reload: api, state_dir, metrics_listen and leader_election changes take effect on restart only")
	}
	next := map[string]config.Sync{}
	for _, sc := range cfg.Syncs {
		next[sc.Name] = sc
	}
	s.mu.Lock()
	var replace []*runningUnit
	for name, r := range s.running {
		if sc, ok := next[name]; ok && reflect.DeepEqual(sc, r.u.cfg) {
			r.u.watcher.Rescan(desired.TriggerReload)
			delete(next, name)
			continue
		}
		replace = append(replace, r)
		delete(s.running, name)
	}
	s.mu.Unlock()

	for _, r := range replace {
		name := r.u.cfg.Name
		if err := s.stop(ctx, r); err != nil {
			log.Error("reload: sync stopped before its queue drained; its replacement rescans", "sync", name, "err", err)
		}
		if _, ok := next[name]; !ok {
			// Its series would otherwise export its last values for
			// good, like a sync that is there and stuck.
			s.app.m.ForgetSync(name)
			log.Info("reload: sync removed", "sync", name)
		}
	}
	for name, sc := range next {
		u, err := s.app.newUnit(sc, false, cf)
		if err != nil {
			log.Error("reload: sync not started", "sync", name, "err", err)
			continue
		}
		s.start(u)
		log.Info("reload: sync (re)started", "sync", name)
	}
	s.mu.Lock()
	s.app.cfg.Syncs = cfg.Syncs
	s.mu.Unlock()
}
