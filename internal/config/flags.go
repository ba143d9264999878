package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Environment variables FromSources reads; the names are wrangler's.
const (
	EnvAccountID  = "CLOUDFLARE_ACCOUNT_ID"
	EnvAPIBaseURL = "CLOUDFLARE_API_BASE_URL"
)

// Flags are the command-line settings. The zero value of a field ("" or 0)
// means the flag was not given, so an empty string cannot be set by flag:
// disable metrics with --metrics-listen=off.
type Flags struct {
	Config        string
	Dir           string
	AccountID     string
	NamespaceID   string
	Prefix        string
	APIBaseURL    string
	StateDir      string
	MetricsListen string
	Concurrency   int
	LogLevel      string
	LogFormat     string
}

// Register defines the flags on fs, writing into f.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Config, "config", "", "YAML config `file`; without it, --dir and --namespace-id describe a single sync")
	fs.StringVar(&f.Dir, "dir", "", "`directory` to publish (overrides the config's sync when it has exactly one)")
	fs.StringVar(&f.AccountID, "account-id", "", "Cloudflare account `id` (default $"+EnvAccountID+", then api.account_id)")
	fs.StringVar(&f.NamespaceID, "namespace-id", "", "KV namespace `id` to write to; required with --dir")
	fs.StringVar(&f.Prefix, "prefix", "", "`prefix` prepended to every key")
	fs.StringVar(&f.APIBaseURL, "api-base-url", "", "API root `URL` (default $"+EnvAPIBaseURL+", then api.base_url, then "+defaultBaseURL+")")
	fs.StringVar(&f.StateDir, "state-dir", "", "`directory` for the state database (default $STATE_DIRECTORY, /var/lib/kvsync for root, else ~/.local/state/kvsync)")
	fs.StringVar(&f.MetricsListen, "metrics-listen", "", "`address` for /metrics, /healthz and /readyz, or off (default "+defaultMetricsListen+")")
	fs.IntVar(&f.Concurrency, "concurrency", 0, fmt.Sprintf("API requests in flight, 1..%d (default %d)", maxConcurrency, defaultConcurrency))
	fs.StringVar(&f.LogLevel, "log-level", "", "debug, info, warn or error (default "+defaultLogLevel+")")
	fs.StringVar(&f.LogFormat, "log-format", "", "text or json (default "+defaultLogFormat+")")
}

// FromSources builds the configuration from the flags, the environment and
// the config file, and validates it. Precedence, highest first:
//
//	flags > environment (CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_BASE_URL) > config file > defaults
//
// With --config, the file is read and --dir, --namespace-id and --prefix
// override its sync, which is allowed only when it has exactly one. Without
// --config, --dir and --namespace-id describe a single sync. A relative --dir
// or --state-dir resolves against the working directory. getenv reads the
// environment (os.Getenv; nil means an empty environment); it also feeds
// DefaultStateDir.
func FromSources(f Flags, getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var c Config
	if f.Config != "" {
		data, err := os.ReadFile(f.Config)
		if err != nil {
			return Config{}, fmt.Errorf("config file: %w", err)
		}
		if c, err = parseFile(data, f.Config); err != nil {
			return c, err
		}
		for _, fl := range []struct{ name, val string }{{"--dir", f.Dir}, {"--namespace-id", f.NamespaceID}, {"--prefix", f.Prefix}} {
			if fl.val != "" && len(c.Syncs) != 1 {
				return c, &FieldError{Source: Source{Flag: fl.name}, Kind: ErrConflict,
					Msg: fmt.Sprintf("overrides the sync of a config file with exactly one sync, but %s has %d", f.Config, len(c.Syncs))}
			}
		}
	} else {
		switch {
		case f.Dir == "" && f.NamespaceID != "":
			return Config{}, &FieldError{Source: Source{Flag: "--dir"}, Kind: ErrRequired, Msg: "is required with --namespace-id"}
		case f.Dir == "" && f.Prefix != "":
			return Config{}, &FieldError{Source: Source{Flag: "--dir"}, Kind: ErrRequired, Msg: "is required with --prefix"}
		case f.Dir == "":
			return Config{}, &FieldError{Source: Source{Flag: "--config"}, Kind: ErrRequired, Msg: "or --dir with --namespace-id is required"}
		case f.NamespaceID == "":
			return Config{}, &FieldError{Source: Source{Flag: "--namespace-id"}, Kind: ErrRequired, Msg: "is required with --dir"}
		}
		c = baseDefaults()
		c.src = newSources()
		c.Syncs = []Sync{DefaultSync()}
		c.src.set("syncs[0]", Source{Flag: "--dir"})
	}

	setStr := func(dst *string, path string, val string, src Source) {
		if val != "" {
			*dst = val
			c.src.set(path, src)
		}
	}
	setStr(&c.API.AccountID, "api.account_id", getenv(EnvAccountID), Source{Env: EnvAccountID})
	setStr(&c.API.BaseURL, "api.base_url", strings.TrimSpace(getenv(EnvAPIBaseURL)), Source{Env: EnvAPIBaseURL})

	setStr(&c.API.AccountID, "api.account_id", f.AccountID, Source{Flag: "--account-id"})
	setStr(&c.API.BaseURL, "api.base_url", f.APIBaseURL, Source{Flag: "--api-base-url"})
	setStr(&c.StateDir, "state_dir", absPath(f.StateDir), Source{Flag: "--state-dir"})
	setStr(&c.MetricsListen, "metrics_listen", f.MetricsListen, Source{Flag: "--metrics-listen"})
	setStr(&c.LogLevel, "log_level", f.LogLevel, Source{Flag: "--log-level"})
	setStr(&c.LogFormat, "log_format", f.LogFormat, Source{Flag: "--log-format"})
	if f.Concurrency != 0 {
		c.API.Concurrency = f.Concurrency
		c.src.set("api.concurrency", Source{Flag: "--concurrency"})
	}
	if len(c.Syncs) == 1 {
		s := &c.Syncs[0]
		setStr(&s.Dir, "syncs[0].dir", absPath(f.Dir), Source{Flag: "--dir"})
		setStr(&s.NamespaceID, "syncs[0].namespace_id", f.NamespaceID, Source{Flag: "--namespace-id"})
		setStr(&s.Prefix, "syncs[0].prefix", f.Prefix, Source{Flag: "--prefix"})
	}

	c.fillDefaults(getenv, os.Geteuid())
	return c, c.Validate()
}

// absPath resolves a flag's path against the working directory, where the
// user typed it; "" (not given) and "~" paths (for Validate) stay as they are.
func absPath(p string) string {
	if p == "" || strings.HasPrefix(p, "~") {
		return p
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}
