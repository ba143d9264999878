// Package config is kvsync's configuration: the YAML schema, its defaults,
// the flags of the single-directory case, the environment, validation whose
// errors name the field and where it was set, and the API credentials.
//
// Precedence, highest first: flags > environment > config file > defaults.
// Every error about a value names its field path (syncs[0].expiration[1].ttl)
// and its origin: file:line for the config file, the flag (--concurrency) or
// the environment variable ($CLOUDFLARE_API_BASE_URL).
//
// Relative paths in a config file (dir, state_dir, api.token_file,
// api.ca_file) resolve against the directory holding the config file, so a
// config means the same thing whatever the working directory of the daemon.
// "~" is not expanded (no shell is involved); such paths are rejected.
package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/ratelimit"
	"github.com/kvsync/kvsync/uploader"
)

// Config is the whole configuration of one kvsync process.
//
// Config carries, unexported, where each value was set so that Validate can
// name a file line or a flag; values set in code are reported by field path
// only.
type Config struct {
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// StateDir holds the state database. See DefaultStateDir.
	StateDir string `yaml:"state_dir"`
	// MetricsListen is the address of /metrics, /healthz and /readyz;
	// "" or "off" disables the listener. A non-loopback address is allowed:
	// it can only come from explicit configuration.
	MetricsListen string `yaml:"metrics_listen"`
	// API is how to reach and authenticate to the KV REST API.
	API API `yaml:"api"`
	// Syncs are the directory trees to publish; at least one.
	Syncs []Sync `yaml:"syncs"`
	// LeaderElection elects one writer per sync among processes (leader.go).
	LeaderElection LeaderElection `yaml:"leader_election"`

	src *sources
}

// API describes the Cloudflare API endpoint, account, credentials source
// and request budget.
type API struct {
	// BaseURL is the API root. http:// is accepted only for loopback hosts,
	// since the token travels in every request.
	BaseURL string `yaml:"base_url"`
	// AccountID owns the namespaces.
	AccountID string `yaml:"account_id"`
	// TokenFile holds an API token; see ResolveCredentials for the order in
	// which credential sources are tried.
	TokenFile string `yaml:"token_file"`
	// CAFile is an extra PEM bundle trusted in addition to the system roots
	// (a TLS-intercepting proxy). There is deliberately no option to disable
	// certificate verification.
	CAFile string `yaml:"ca_file"`
	// Rate is the sustained request rate, per second, of the one token
	// bucket all syncs share.
	//
	// Cloudflare counts a token's requests per window
	// (kvapi.BudgetWindow) across every client using it, and going over
	// blocks the token for a window. A bucket admits at most
	// Rate×window+Burst requests in any window, so Validate rejects values
	// where that exceeds Budget. The defaults (ratelimit.DefaultRate) leave
	// headroom, as wrangler does, for a dashboard or CLI sharing the token;
	// lower Rate if other tools use the same token heavily.
	Rate float64 `yaml:"rate"`
	// Burst is the bucket size; see Rate.
	Burst int `yaml:"burst"`
	// Budget is the number of API requests the account may make per window:
	// kvapi.AccountBudget unless Cloudflare raised it for the account.
	// It only bounds Rate and Burst; kvsync never spends it all.
	Budget int `yaml:"budget"`
	// Concurrency is how many requests may be in flight at once, 1..64.
	Concurrency int `yaml:"concurrency"`
	// Timeout bounds one request, a bulk request of up to
	// kvapi.MaxBulkRequestBytes included.
	Timeout time.Duration `yaml:"timeout"`
	// MaxRetries is how often a retryable failure (429, 5xx, network) is
	// retried; 0 disables retries.
	MaxRetries int `yaml:"max_retries"`
}

// Sync publishes one directory tree into one namespace under one prefix.
type Sync struct {
	// Name identifies the sync in logs and metrics. It defaults to the last
	// element of Dir, reduced to [A-Za-z0-9._-]; names must be unique.
	Name string `yaml:"name"`
	// Dir is the root of the tree.
	Dir string `yaml:"dir"`
	// NamespaceID is the KV namespace written to.
	NamespaceID string `yaml:"namespace_id"`
	// Prefix is prepended to each file's path relative to Dir to form its key.
	Prefix string `yaml:"prefix"`
	// Include and Exclude are doublestar globs matched against the path
	// relative to Dir with "/" separators. With Include set, only matching
	// files are published; Exclude wins over Include.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
	// DefaultExcludes applies the watcher's built-in excludes (VCS metadata,
	// editor temporary files).
	DefaultExcludes bool `yaml:"default_excludes"`
	// IncludeHidden publishes files and directories whose name starts with ".".
	IncludeHidden bool `yaml:"include_hidden"`
	// FollowSymlinksOutside publishes symlinks that point outside Dir.
	FollowSymlinksOutside bool `yaml:"follow_symlinks_outside"`
	// Expiration rules are tried in order; the first whose Match matches the
	// relative path sets the key's expiration.
	Expiration []ExpirationRule `yaml:"expiration"`
	// DefaultExpiration applies to files no rule matched; zero means never.
	DefaultExpiration ExpirationRule `yaml:"default_expiration"`
	// Delete is what happens to a key whose file is gone.
	Delete uploader.DeletePolicy `yaml:"delete"`
	// DeleteTTL is the expiration given to orphaned keys under DeleteExpire.
	DeleteTTL time.Duration `yaml:"delete_ttl"`
	// MaxDeletes caps the deletions of one sync pass, so that a directory
	// that vanished or was emptied by mistake cannot wipe the namespace.
	// The deletions a running daemon sees between two full syncs count as
	// one pass. 0 allows no deletions at all; -1 removes the cap.
	MaxDeletes int `yaml:"max_deletes"`
	// Quiet is how long a file must stay unchanged before it is uploaded.
	Quiet time.Duration `yaml:"quiet"`
	// MaxDelay bounds how long a file that keeps changing waits.
	MaxDelay time.Duration `yaml:"max_delay"`
	// RescanInterval is the period of the full rescan that catches events the
	// watcher lost; 0 disables it.
	RescanInterval time.Duration `yaml:"rescan_interval"`
	// BulkThreshold: files up to this size go through bulk writes; larger
	// ones are written one request each. 0 disables bulk writes.
	BulkThreshold int64 `yaml:"bulk_threshold"`
	// BulkMaxBytes caps the body of one bulk request (the API allows
	// kvapi.MaxBulkRequestBytes).
	BulkMaxBytes int64 `yaml:"bulk_max_bytes"`
	// RecordInMetadata adds kvsync's record (owner and digest, package
	// kvrecord) to every key's metadata, so the namespace alone says which
	// keys this sync wrote and whether they are current: no local state
	// is needed for correctness. Off, the metadata is exactly the
	// sidecar's and the state store alone knows what was written.
	RecordInMetadata bool `yaml:"record_in_metadata"`
	// ListInterval: the daemon lists the namespace at a full sync when
	// the last listing is at least this old (and always when its store is
	// fresh); 0 lists at every full sync. `kvsync sync` lists every time
	// unless --trust-state.
	ListInterval time.Duration `yaml:"list_interval"`
	// LeaseName is the sync's Lease under leader_election; default
	// DefaultLeaseName(NamespaceID, Prefix).
	LeaseName string `yaml:"lease_name"`
}

// ExpirationRule gives matching keys an expiration: exactly one of TTL
// (relative to each write) and At (an absolute instant).
type ExpirationRule struct {
	// Match is a doublestar glob over the path relative to the sync's Dir.
	// It is empty in Sync.DefaultExpiration.
	Match string `yaml:"match"`
	// TTL is written in whole seconds, at least kvapi.MinTTLSeconds.
	TTL time.Duration `yaml:"ttl"`
	// At is an RFC 3339 instant, whole seconds.
	At time.Time `yaml:"at"`
}

// Defaults. The rate budget is explained at API.Rate.
const (
	defaultLogLevel       = "info"
	defaultLogFormat      = "text"
	defaultMetricsListen  = "127.0.0.1:9464"
	defaultBaseURL        = "https://api.cloudflare.com/client/v4"
	defaultConcurrency    = 4
	defaultTimeout        = 5 * time.Minute
	defaultMaxRetries     = 5
	defaultDeleteTTL      = time.Hour
	defaultMaxDeletes     = 1000
	defaultQuiet          = time.Second
	defaultMaxDelay       = 10 * time.Second
	defaultRescanInterval = time.Hour
	defaultBulkThreshold  = 1 << 20
	defaultBulkMaxBytes   = 8 << 20
	// defaultListInterval: 4 listings a day. A 100,000-key namespace
	// lists in 100 requests, so the daemon spends 400 of the free plan's
	// 1,000 daily list operations and leaves the rest to CI runs and
	// restarts.
	defaultListInterval = 6 * time.Hour
)

// The request budget's defaults: the rate and burst are ratelimit's, which
// owns the headroom kvsync leaves of the account's budget; the budget is
// the API's.
var (
	defaultRate, defaultBurst = func() (float64, int) {
		r, b := ratelimit.DefaultRate()
		return float64(r), b
	}()
	defaultBudget = kvapi.AccountBudget
)

// Default returns the defaults, with StateDir derived from the process's
// environment (DefaultStateDir) and no syncs.
func Default() Config {
	c := baseDefaults()
	c.StateDir = DefaultStateDir(os.Getenv, os.Geteuid())
	return c
}

// baseDefaults is Default without anything derived from the environment.
func baseDefaults() Config {
	return Config{
		LogLevel:      defaultLogLevel,
		LogFormat:     defaultLogFormat,
		MetricsListen: defaultMetricsListen,
		API: API{
			BaseURL:     defaultBaseURL,
			Rate:        defaultRate,
			Burst:       defaultBurst,
			Budget:      defaultBudget,
			Concurrency: defaultConcurrency,
			Timeout:     defaultTimeout,
			MaxRetries:  defaultMaxRetries,
		},
		LeaderElection: defaultLeaderElection(),
	}
}

// DefaultSync returns a Sync holding every default; Name, Dir and
// NamespaceID are left empty.
func DefaultSync() Sync {
	return Sync{
		DefaultExcludes:  true,
		Delete:           uploader.DeleteRemove,
		DeleteTTL:        defaultDeleteTTL,
		MaxDeletes:       defaultMaxDeletes,
		Quiet:            defaultQuiet,
		MaxDelay:         defaultMaxDelay,
		RescanInterval:   defaultRescanInterval,
		BulkThreshold:    defaultBulkThreshold,
		BulkMaxBytes:     defaultBulkMaxBytes,
		RecordInMetadata: true,
		ListInterval:     defaultListInterval,
	}
}

// DefaultStateDir is where state lives when state_dir is not set:
// $STATE_DIRECTORY (set by systemd's StateDirectory=; the first entry when it
// lists several), else /var/lib/kvsync for root, else
// $XDG_STATE_HOME/kvsync, else $HOME/.local/state/kvsync. It returns "" when
// none applies (no HOME), which Validate reports.
func DefaultStateDir(getenv func(string) string, euid int) string {
	if v := getenv("STATE_DIRECTORY"); v != "" {
		first, _, _ := strings.Cut(v, ":")
		return first
	}
	if euid == 0 {
		return "/var/lib/kvsync"
	}
	// The XDG spec says relative values are invalid and must be ignored.
	if v := getenv("XDG_STATE_HOME"); filepath.IsAbs(v) {
		return filepath.Join(v, "kvsync")
	}
	if v := getenv("HOME"); v != "" {
		return filepath.Join(v, ".local", "state", "kvsync")
	}
	return ""
}

// MetricsEnabled reports whether the metrics listener should run.
func (c *Config) MetricsEnabled() bool {
	return c.MetricsListen != "" && c.MetricsListen != "off"
}

// SlogLevel is LogLevel as a slog.Level; info for anything Validate rejects.
func (c *Config) SlogLevel() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// fillDefaults fills what depends on the environment or on other fields.
func (c *Config) fillDefaults(getenv func(string) string, euid int) {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir(getenv, euid)
	}
	for i := range c.Syncs {
		s := &c.Syncs[i]
		if s.Name == "" && s.Dir != "" {
			s.Name = nameFromDir(s.Dir)
		}
		// The default bulk_threshold follows a smaller bulk_max_bytes, so
		// that setting only the latter is not an error about the former,
		// a field the user never set; one set explicitly is validated.
		if !c.src.has(indexPath("syncs", i)+".bulk_threshold") && s.BulkMaxBytes > 0 && s.BulkThreshold > s.BulkMaxBytes {
			s.BulkThreshold = s.BulkMaxBytes
		}
	}
	c.fillLeaderDefaults(getenv, os.ReadFile, os.Hostname)
}

// nameFromDir derives a sync name from its directory: the last element,
// with characters outside [A-Za-z0-9._-] replaced by "-".
func nameFromDir(dir string) string {
	base := filepath.Base(filepath.Clean(dir))
	name := strings.Trim(strings.Map(func(r rune) rune {
		if validNameRune(r) {
			return r
		}
		return '-'
	}, base), "-.")
	if name == "" {
		return "sync"
	}
	return name
}

func validNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}
