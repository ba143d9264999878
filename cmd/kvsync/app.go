package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/time/rate"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
	"github.com/kvsync/kvsync/ratelimit"
	"github.com/kvsync/kvsync/uploader"
	"github.com/kvsync/kvsync/watcher"
)

// errSyncFailed marks a sync that ran to its end without publishing the
// whole tree: a file failed, was held back or skipped, a deletion was
// refused, or the namespace could not be reached.
var errSyncFailed = errors.New("not everything was published")

// errCheckFailed marks a check that found problems in the tree.
var errCheckFailed = errors.New("problems found")

// commonFlags are the flags of run, sync, plan and check. Each command
// registers only the ones it acts on (flagSet), so its -h lists nothing
// that would do nothing there.
type commonFlags struct {
	cfg         config.Flags
	local       bool
	localListen string
	drain       time.Duration
	// oneShot: sync or plan, which list the namespace every run unless
	// trustState; run lists per list_interval.
	oneShot    bool
	trustState bool
	// concurrencySet: --concurrency was given, so its 0 is a value, not
	// "unset" (config.Flags' zero value).
	concurrencySet bool
}

// flagSet says which of commonFlags a command takes.
type flagSet uint

const (
	flagsConcurrency flagSet = 1 << iota // --concurrency
	flagsMetrics                         // --metrics-listen
	flagsLocal                           // --local, --local-listen
	flagsDrain                           // --drain-timeout
	flagsOneShot                         // --trust-state
)

// configOnly are the config.Flags every command that loads the config takes
// (the config, where and what it publishes, logging); --concurrency and
// --metrics-listen shape only a run that writes.
var configOnly = map[string]bool{
	"config": true, "dir": true, "account-id": true, "namespace-id": true, "prefix": true,
	"api-base-url": true, "state-dir": true, "log-level": true, "log-format": true,
}

func (c *commonFlags) register(cmd string, fs *flag.FlagSet, which flagSet) {
	// config.Flags registers all its flags; a scratch set lets a command
	// take only some of them, with their usage text unchanged.
	all := flag.NewFlagSet(cmd, flag.ContinueOnError)
	c.cfg.Register(all)
	all.VisitAll(func(f *flag.Flag) {
		switch {
		case configOnly[f.Name]:
		case f.Name == "concurrency" && which&flagsConcurrency != 0:
		case f.Name == "metrics-listen" && which&flagsMetrics != 0:
		default:
			return
		}
		fs.Var(f.Value, f.Name, f.Usage)
	})
	if which&flagsLocal != 0 {
		fs.BoolVar(&c.local, "local", false, "start the built-in KV emulator (persisted under the state directory) and sync into it: no Cloudflare account needed")
		def := "127.0.0.1:0"
		if cmd == "run" {
			def = "127.0.0.1:8787"
		}
		fs.StringVar(&c.localListen, "local-listen", def, "with --local: where the emulator listens")
	}
	if which&flagsDrain != 0 {
		fs.DurationVar(&c.drain, "drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long in-flight work may take to finish")
	}
	if which&flagsOneShot != 0 {
		c.oneShot = true
		fs.BoolVar(&c.trustState, "trust-state", false, "compare with the local state store instead of listing the namespace (one request still proves it reachable); with no store, it lists anyway")
	}
}

// parse parses args into c and refuses what config.FromSources cannot see:
// --concurrency 0, which its zero value would take for "not given".
func (c *commonFlags) parse(fs *flag.FlagSet, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) { c.concurrencySet = c.concurrencySet || f.Name == "concurrency" })
	if c.concurrencySet && c.cfg.Concurrency == 0 {
		return usageError{&config.FieldError{Source: config.Source{Flag: "--concurrency"}, Field: "api.concurrency", Kind: config.ErrInvalid,
			Msg: fmt.Sprintf("0 is outside 1..%d", config.MaxConcurrency)}}
	}
	return nil
}

// app is one wired process: config, logger, metrics, the decorated KV client,
// the state store, and one watcher plus engine per configured sync.
type app struct {
	cfg config.Config
	log *slog.Logger
	reg *prometheus.Registry
	m   *metrics.Metrics
	kv  kvapi.KV
	// limiter is the account's token bucket and 429 pause, which the
	// daemon's drain consults.
	limiter *ratelimit.Limiter
	store   *state.Store
	// tmpDir holds the store of a plan made beside a daemon (openStore).
	tmpDir string
	local  *localEmulator
	units  []*unit
	// elect is set under leader_election (leader.go).
	elect *election
}

type unit struct {
	cfg     config.Sync
	watcher *watcher.Watcher
	engine  *uploader.Engine
	// recordsExist is false while the store holds no record for the sync's
	// namespace; the daemon sets it once the first full sync is handed over.
	recordsExist atomic.Bool
	// engineOptions built engine. Under leader_election each term builds
	// an engine of its own from them (leader.go) and holds it in term
	// while it lasts; engine then never runs.
	engineOptions uploader.Options
	term          atomic.Pointer[uploader.Engine]
}

// loadConfig builds the config from the flags, environment and file, and
// refuses one that would publish kvsync's own files; it needs no network and
// no state, so check uses it alone, and a reload goes through it too.
func loadConfig(cf *commonFlags) (config.Config, error) {
	f := cf.cfg
	if cf.local {
		// The emulator accepts any ids; fill them so one flag is enough.
		if f.Config == "" && f.NamespaceID == "" {
			f.NamespaceID = "local"
		}
		if f.AccountID == "" {
			f.AccountID = "local"
		}
		// Replaced by the emulator's real address once it listens.
		f.APIBaseURL = "http://127.0.0.1/client/v4"
	}
	cfg, err := config.FromSources(f, os.Getenv)
	if err != nil {
		return cfg, usageError{err}
	}
	if err := checkOwnFilesUnpublished(&cfg, f.Config, os.Getenv, cf.local); err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

// newApp wires everything but starts nothing that runs in the background,
// except the local emulator when asked for.
func newApp(ctx context.Context, cf *commonFlags, stderr io.Writer, dryRun bool) (*app, error) {
	cfg, err := loadConfig(cf)
	if err != nil {
		return nil, err
	}
	logger, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return nil, usageError{err}
	}
	a := &app{cfg: cfg, log: logger, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.m = metrics.New(a.reg, version)

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	var creds config.Credentials
	if cf.local {
		a.local, err = startLocalEmulator(ctx, filepath.Join(cfg.StateDir, "emulator"), cf.localListen, logger)
		if err != nil {
			return nil, err
		}
		a.cfg.API.BaseURL = a.local.baseURL
		creds = config.Credentials{Token: localToken}
	} else {
		creds, err = config.ResolveCredentials(cfg.API, os.Getenv, logger)
		if err != nil {
			return nil, usageError{err}
		}
	}
	if err := a.buildClient(creds); err != nil {
		a.close()
		return nil, err
	}

	if err := a.openStore(cf, dryRun); err != nil {
		a.close()
		return nil, err
	}
	for _, s := range a.cfg.Syncs {
		u, err := a.newUnit(s, dryRun, cf)
		if err != nil {
			a.close()
			return nil, usageError{err}
		}
		a.units = append(a.units, u)
	}
	return a, nil
}

// openStore opens the state store. Another kvsync (the daemon) holding it
// fails run and sync, naming what to do; a plan then plans from the
// namespace's listing with a store of its own, since the records in the
// keys' metadata say what the daemon's store would.
func (a *app) openStore(cf *commonFlags, dryRun bool) error {
	path := filepath.Join(a.cfg.StateDir, "state.db")
	var err error
	a.store, err = state.Open(path, state.Options{Logger: a.log})
	switch {
	case err == nil:
		if a.store.Fresh() {
			a.log.Info("starting with an empty state store: the first sync lists the namespace to learn what is published", "state", path)
		}
		return nil
	case !errors.Is(err, state.ErrInUse):
		return err
	case !dryRun:
		return fmt.Errorf("%w: a kvsync daemon (or another sync) is using this state directory; stop it first, or preview with kvsync plan, which works beside it", err)
	case cf.trustState:
		return fmt.Errorf("%w: --trust-state needs it; plan without --trust-state, which lists the namespace instead, or stop the daemon", err)
	}
	for _, s := range a.cfg.Syncs {
		if !s.RecordInMetadata {
			return fmt.Errorf("%w, and sync %q has record_in_metadata: false, so only that store knows what it wrote; stop the daemon to plan it", err, s.Name)
		}
	}
	dir, terr := os.MkdirTemp("", "kvsync-plan-")
	if terr != nil {
		return fmt.Errorf("%w; a temporary store to plan from the listing: %w", err, terr)
	}
	a.tmpDir = dir
	a.log.Info("the state store is in use by another kvsync (the daemon): planning from the namespace listing", "state", path)
	a.store, err = state.Open(filepath.Join(dir, "state.db"), state.Options{Logger: a.log})
	return err
}

func (a *app) buildClient(creds config.Credentials) error {
	tlsCfg, err := tlsConfig(a.cfg.API.CAFile)
	if err != nil {
		return usageError{err}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsCfg
	transport.MaxIdleConnsPerHost = a.cfg.API.Concurrency + 2
	client, err := kvapi.New(kvapi.Options{
		BaseURL:    a.cfg.API.BaseURL,
		AccountID:  a.cfg.API.AccountID,
		Token:      creds.Token,
		Email:      creds.Email,
		APIKey:     creds.APIKey,
		HTTPClient: &http.Client{Transport: transport, Timeout: a.cfg.API.Timeout},
		UserAgent:  "kvsync/" + version,
	})
	if err != nil {
		return usageError{err}
	}
	lim := ratelimit.NewLimiter(ratelimit.LimiterOptions{
		Rate:    rate.Limit(a.cfg.API.Rate),
		Burst:   a.cfg.API.Burst,
		Metrics: a.m,
	})
	a.limiter = lim
	a.kv = ratelimit.Chain(client, ratelimit.ChainOptions{
		Limiter: lim,
		Policy:  ratelimit.RetryPolicy{MaxAttempts: a.cfg.API.MaxRetries + 1},
		Metrics: a.m,
		Log:     a.log,
	})
	return nil
}

// tlsConfig trusts the system roots plus an optional CA bundle. There is
// deliberately no way to turn verification off.
func tlsConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("api.ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("api.ca_file %s: no PEM certificate found", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

func (a *app) newUnit(s config.Sync, dryRun bool, cf *commonFlags) (*unit, error) {
	wo := watcherOptions(s, a.log, a.m)
	scope := a.scope(s)
	u := &unit{cfg: s}
	// A key neither the store nor the listing knows as written is written
	// whatever its content, so the scan need not read and hash its file:
	// on a first publish every file is read once, when it is sent. While
	// the scope has no record at all not even the store lookup is needed;
	// on a store error, hash.
	// One record is enough to know; Len would walk the whole bucket.
	errFound := errors.New("found")
	err := a.store.ForEach(scope, "", func(string, state.Record) error { return errFound })
	u.recordsExist.Store(err != nil)
	wo.NeedHash = func(key string) bool {
		if dryRun {
			// A plan must foresee what a sync would hold back, and an
			// unreadable file is found only by reading it: the sync reads
			// every file it sends, so the plan reads them too.
			return true
		}
		if u.published(key) {
			return true
		}
		if !u.recordsExist.Load() {
			return false
		}
		_, ok, err := a.store.Get(scope, key)
		return ok || err != nil
	}
	// The store persists the watcher's hash cache: a file whose stat is
	// the one recorded with its key is not read again, in a new process
	// too (desired.Stamp).
	wo.Recorded = func(key string) (desired.Stamp, string, bool) {
		if !u.recordsExist.Load() {
			return desired.Stamp{}, "", false
		}
		// In a full sync, from the engine's merge of the store in key
		// order rather than a lookup per file.
		return u.engine.Recorded(key)
	}
	var owner kvrecord.Owner
	if s.RecordInMetadata {
		owner = kvrecord.OwnerOf(s.NamespaceID, s.Prefix)
	} else {
		a.log.Warn("record_in_metadata is off: only the local state store knows what this sync wrote; with a new or lost state directory every file is written again and keys of removed files are never deleted",
			"sync", s.Name)
	}
	listInterval := s.ListInterval
	if cf.oneShot {
		listInterval = 0
		if cf.trustState {
			listInterval = -1
		}
	}
	w, err := watcher.New(wo)
	if err != nil {
		return nil, fmt.Errorf("sync %q: %w", s.Name, err)
	}
	u.engineOptions = uploader.Options{
		KV:            a.kv,
		Store:         a.store,
		Scope:         scope,
		Namespace:     s.NamespaceID,
		Prefix:        s.Prefix,
		Concurrency:   a.cfg.API.Concurrency,
		Delete:        s.Delete,
		DeleteTTL:     s.DeleteTTL,
		MaxDeletes:    s.MaxDeletes,
		BulkThreshold: bulkThreshold(s.BulkThreshold),
		BulkMaxBytes:  s.BulkMaxBytes,
		DryRun:        dryRun,
		Owner:         owner,
		ListInterval:  listInterval,
		Reconcile:     a.store.Fresh(),
		// A file that is not the one the scan saw is not written; the
		// watcher, when Run runs it, evaluates the path again.
		Recheck: w.Recheck,
		Logger:  a.log.With("sync", s.Name),
		Metrics: a.m.Sync(s.Name),
	}
	e, err := uploader.New(u.engineOptions)
	if err != nil {
		return nil, fmt.Errorf("sync %q: %w", s.Name, err)
	}
	u.watcher, u.engine = w, e
	return u, nil
}

// scope names a sync's namespace in the state store.
func (a *app) scope(s config.Sync) string { return a.cfg.API.AccountID + "/" + s.NamespaceID }

func watcherOptions(s config.Sync, logger *slog.Logger, m *metrics.Metrics) watcher.Options {
	rules := make([]watcher.ExpirationRule, len(s.Expiration))
	for i, r := range s.Expiration {
		rules[i] = watcher.ExpirationRule{Match: r.Match, TTL: r.TTL, At: r.At}
	}
	return watcher.Options{
		Root:                 s.Dir,
		Prefix:               s.Prefix,
		Include:              s.Include,
		Exclude:              s.Exclude,
		NoDefaultExcludes:    !s.DefaultExcludes,
		IncludeHidden:        s.IncludeHidden,
		ExpirationRules:      rules,
		DefaultExpiration:    desired.Expiration{TTL: s.DefaultExpiration.TTL, At: s.DefaultExpiration.At},
		Quiet:                s.Quiet,
		MaxDelay:             s.MaxDelay,
		RescanInterval:       rescanInterval(s.RescanInterval),
		AllowSymlinksOutside: s.FollowSymlinksOutside,
		RecordInMetadata:     s.RecordInMetadata,
		Logger:               logger.With("sync", s.Name),
		Metrics:              m.Sync(s.Name),
	}
}

// bulkThreshold maps the config's "0 disables bulk writes" onto the engine's
// -1 (its 0 means the default).
func bulkThreshold(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

// rescanInterval maps the config's "0 disables" onto the watcher's "<0 disables".
func rescanInterval(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func (a *app) close() {
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.log.Error("closing the state store", "err", err)
		}
	}
	if a.local != nil {
		a.local.stop()
	}
	if a.tmpDir != "" {
		if err := os.RemoveAll(a.tmpDir); err != nil {
			a.log.Warn("removing the plan's temporary state store", "err", err)
		}
	}
}
