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

// errSyncFailed marks a run that completed but left keys unwritten.
var errSyncFailed = errors.New("some keys were not synced")

// commonFlags are the flags run, sync and plan share.
type commonFlags struct {
	cfg         config.Flags
	local       bool
	localListen string
	drain       time.Duration
	// oneShot: sync or plan, which list the namespace every run unless
	// trustState; run lists per list_interval.
	oneShot    bool
	trustState bool
}

// registerTrustState adds --trust-state, which only sync and plan have.
func (c *commonFlags) registerTrustState(fs *flag.FlagSet) {
	c.oneShot = true
	fs.BoolVar(&c.trustState, "trust-state", false, "compare with the local state store instead of listing the namespace (one request still proves it reachable); with no store, it lists anyway")
}

func (c *commonFlags) register(fsName string, fs *flag.FlagSet) {
	c.cfg.Register(fs)
	fs.BoolVar(&c.local, "local", false, "start the built-in KV emulator (persisted under the state directory) and sync into it: no Cloudflare account needed")
	def := "127.0.0.1:0"
	if fsName == "run" {
		def = "127.0.0.1:8787"
	}
	fs.StringVar(&c.localListen, "local-listen", def, "with --local: where the emulator listens")
	fs.DurationVar(&c.drain, "drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long in-flight work may take to finish")
}

// app is one wired process: config, logger, metrics, the decorated KV client,
// the state store, and one watcher plus engine per configured sync.
type app struct {
	cfg   config.Config
	log   *slog.Logger
	reg   *prometheus.Registry
	m     *metrics.Metrics
	kv    kvapi.KV
	store *state.Store
	local *localEmulator
	units []*unit
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

	a.store, err = state.Open(filepath.Join(cfg.StateDir, "state.db"), state.Options{Logger: logger})
	if err != nil {
		a.close()
		return nil, err
	}
	if a.store.Fresh() {
		logger.Info("starting with an empty state store: the first sync lists the namespace to learn what is published", "state", filepath.Join(cfg.StateDir, "state.db"))
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
}
