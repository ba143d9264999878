package watcher

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// Defaults of Options, chosen after syncthing and consul-template: a short
// quiet period catches the burst of events one save produces, the maximum
// delay keeps a file that never stops changing from never being published,
// and the hourly rescan is the backstop for events inotify lost.
const (
	DefaultQuiet          = time.Second
	DefaultMaxDelay       = 10 * time.Second
	DefaultRescanInterval = time.Hour
	// DefaultFlushTimeout bounds the shutdown flush of Run. It sits well
	// inside systemd's default 90 s stop timeout and Kubernetes' default
	// 30 s grace period, leaving the uploader time to drain what it gets.
	DefaultFlushTimeout = 10 * time.Second
	// MinQuiet is the floor of Options.Quiet: "no delay at all isn't ok,
	// notify sometimes creates multiple events for a single change"
	// (syncthing PR #7864).
	MinQuiet = 10 * time.Millisecond
	// degradedRescan bounds the rescan interval while the kernel refuses
	// watches, since rescans are then the only way changes are seen.
	degradedRescan = time.Minute
	// SidecarSuffix names a file's metadata sidecar: "<name>.meta.json".
	SidecarSuffix = ".meta.json"
)

// ErrInvalidOptions is wrapped by every error New returns.
var ErrInvalidOptions = errors.New("watcher: invalid options")

// ExpirationRule gives the keys of matching files an expiration.
type ExpirationRule struct {
	// Match is a doublestar glob on the /-separated path relative to the root.
	Match string
	// TTL is relative to each write; at least kvapi.MinTTLSeconds, since KV
	// refuses a shorter one. Exclusive with At.
	TTL time.Duration
	// At is an absolute expiration. Exclusive with TTL.
	At time.Time
}

// Options configures a Watcher. The zero value of every field but Root is
// usable.
type Options struct {
	// Root is the directory to publish; New makes it absolute.
	Root string
	// Prefix is prepended verbatim to every key.
	Prefix string
	// Include holds doublestar globs on the /-separated relative path of
	// files; empty publishes everything. Directories are always descended.
	// Include does not override the default excludes: a file matched by
	// Include but hidden or editor debris is still skipped unless
	// IncludeHidden or NoDefaultExcludes says otherwise. Explicit intent
	// about debris belongs in those switches, not in a broad "**".
	Include []string
	// Exclude holds globs matched against relative paths of files and
	// directories; an excluded directory is neither descended nor watched.
	// Exclude always wins over Include. Globs match the whole relative path:
	// write "**/node_modules" to exclude that name at any depth.
	Exclude []string
	// NoDefaultExcludes publishes editor and OS debris (swap files, backups,
	// temp files of atomic saves, .DS_Store, ...), which is skipped by default.
	NoDefaultExcludes bool
	// IncludeHidden publishes hidden paths (any segment starting with "."),
	// which are skipped by default except ".well-known".
	IncludeHidden bool
	// ExpirationRules are tried in order; the first match wins.
	ExpirationRules []ExpirationRule
	// DefaultExpiration applies to files no rule matches.
	DefaultExpiration desired.Expiration
	// Quiet is how long a path must see no events before it is emitted;
	// default DefaultQuiet, never below MinQuiet.
	Quiet time.Duration
	// MaxDelay bounds how long a path that keeps changing waits; default
	// DefaultMaxDelay, never below Quiet.
	MaxDelay time.Duration
	// RescanInterval is the period of full rescans; default
	// DefaultRescanInterval, negative disables them.
	RescanInterval time.Duration
	// FlushTimeout bounds how long Run, once its ctx is done, spends
	// handing the changes it has seen but not yet emitted (paths still in
	// their debounce window or queued) to the sink; default
	// DefaultFlushTimeout. Negative skips the flush, and Run returns
	// without waiting for a sink call in progress: such changes wait for
	// the next start's full scan, which on a volume that dies with the
	// process (a Kubernetes emptyDir) never comes.
	FlushTimeout time.Duration
	// AllowSymlinksOutside publishes what a symlink in the tree leads to
	// when that is a regular file outside Root; by default such links are
	// skipped. It is an explicit opt-in that widens what may be read only
	// by the targets of the tree's own links, each pinned when it is
	// scanned: the target's real path (every symlink on its way resolved
	// then) is looked up beneath "/" with no symlink followed, and the
	// file read must have the identity the scan saw, like any file of the
	// tree (desired.State.File). A directory of the tree, a sidecar's
	// path or a target swapped after the scan still cannot lead a read
	// outside. Symlinks to directories and symlink loops are never
	// followed.
	AllowSymlinksOutside bool
	// MaxFileSize is the largest file published; default kvapi.MaxValueBytes.
	MaxFileSize int64
	// Logger receives warnings about skipped files; default slog.Default().
	Logger *slog.Logger
	// Metrics receives this sync's series (metrics.Metrics.Sync); nil
	// counts nothing.
	Metrics *metrics.Sync
	// Now is the clock, default time.Now. The hash cache uses it to tell
	// files written "just now", whose timestamps cannot yet prove they are
	// unchanged, from settled ones.
	Now func() time.Time
	// NeedHash says whether the sink needs the content hash of the file
	// whose key is given; nil means always. A sink writes a key it holds
	// no record of whatever its content, so for such keys (every key of a
	// first publish) reading and hashing the file during the scan would
	// only be repeated when it is sent. When NeedHash returns false the
	// file is not opened: its State has Hash "" (see desired.State) and
	// Size from stat, and a file that cannot be read reaches the sink as
	// an ordinary State rather than one held back with ErrUnreadable; the
	// sink's own read of it fails instead. It is called from the goroutine
	// that scans, with the watcher's lock held: it must not call back into
	// the Watcher.
	NeedHash func(key string) bool
	// Recorded, when set, returns the sink's record of key's content: the
	// stamp of the file it was read from and its hash (desired.Stamp). A
	// file whose stat equals the stamp is not opened: the hash is taken
	// from the record. It persists the watcher's hash cache, so a new
	// process need not read an unchanged tree. Called like NeedHash.
	Recorded func(key string) (stamp desired.Stamp, hash string, ok bool)
	// RecordInMetadata says the uploader adds its record (package
	// kvrecord) to every key's metadata: a sidecar that sets the reserved
	// field, or leaves no room for it, is invalid.
	RecordInMetadata bool
}

// debris lists the base-name globs of editor and OS litter skipped by
// default. Vim's swap files and its "4913" write probe, Emacs' backups,
// lock and auto-save files, Finder and Explorer droppings, and the temp
// names of atomic saves and partial downloads. isDebris checks them by
// hand, as names, prefixes and suffixes: a new glob goes there too, and a
// name it matches into TestIsDebrisMatchesGlobs.
var debris = []string{
	"*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913",
	".DS_Store", "Thumbs.db", "desktop.ini",
	"*.tmp", ".*.tmp", "*.part", "*.crdownload",
}

// rsyncTemp matches rsync's in-flight temp files ".name.XXXXXX", where XXXXXX
// comes from mkstemp; mixedSuffix tells a random suffix from a word like
// ".env.sample".
var rsyncTemp = regexp.MustCompile(`^\..+\.([A-Za-z0-9]{6})$`)

func mixedSuffix(s string) bool {
	var lower, upper, digit bool
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z':
			lower = true
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= '0' && r <= '9':
			digit = true
		}
	}
	n := 0
	for _, b := range []bool{lower, upper, digit} {
		if b {
			n++
		}
	}
	return n >= 2
}

// isDebris reports whether a base name is editor or OS litter: it matches
// one of the debris globs or is an rsync temp file. It runs for every file
// of every scan, so the globs, which are all a prefix, a suffix or a whole
// name, are checked as such (TestIsDebrisMatchesGlobs holds it to them).
func isDebris(name string) bool {
	switch name {
	case "4913", ".DS_Store", "Thumbs.db", "desktop.ini":
		return true
	}
	for _, suffix := range []string{".swp", ".swo", ".swx", "~", ".tmp", ".part", ".crdownload"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	if strings.HasPrefix(name, ".#") || len(name) >= 2 && name[0] == '#' && name[len(name)-1] == '#' {
		return true
	}
	if name == "" || name[0] != '.' {
		return false // rsync's temp names start with a dot
	}
	if m := rsyncTemp.FindStringSubmatch(name); m != nil && mixedSuffix(m[1]) {
		return true
	}
	return false
}

// isSidecar reports whether a relative path names a metadata sidecar.
func isSidecar(rel string) bool {
	return strings.HasSuffix(rel, SidecarSuffix) && len(path.Base(rel)) > len(SidecarSuffix)
}

func optErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidOptions, field, fmt.Sprintf(format, args...))
}

// validateExpiration checks what New can know about an expiration; whether
// an absolute time is far enough ahead is decided at upload time.
func validateExpiration(field string, e desired.Expiration) error {
	switch {
	case e.TTL < 0:
		return optErr(field, "TTL %s is negative", e.TTL)
	case e.TTL > 0 && e.TTL < kvapi.MinTTLSeconds*time.Second:
		return optErr(field, "TTL %s is below the KV minimum of %ds", e.TTL, kvapi.MinTTLSeconds)
	case e.TTL > 0 && !e.At.IsZero():
		return optErr(field, "set TTL or At, not both")
	}
	return nil
}

// finalize validates opts and fills in defaults.
func (o Options) finalize() (Options, error) {
	if o.Root == "" {
		return o, optErr("Root", "is empty")
	}
	abs, err := filepath.Abs(o.Root)
	if err != nil {
		return o, optErr("Root", "%v", err)
	}
	o.Root = abs
	if !utf8.ValidString(o.Prefix) {
		return o, optErr("Prefix", "%q is not valid UTF-8", o.Prefix)
	}
	if len(o.Prefix) >= kvapi.MaxKeyBytes {
		return o, optErr("Prefix", "is %d bytes; keys are at most %d", len(o.Prefix), kvapi.MaxKeyBytes)
	}
	for i, g := range o.Include {
		if !doublestar.ValidatePattern(g) {
			return o, optErr(fmt.Sprintf("Include[%d]", i), "bad glob %q", g)
		}
	}
	for i, g := range o.Exclude {
		if !doublestar.ValidatePattern(g) {
			return o, optErr(fmt.Sprintf("Exclude[%d]", i), "bad glob %q", g)
		}
	}
	for i, r := range o.ExpirationRules {
		field := fmt.Sprintf("ExpirationRules[%d]", i)
		if r.Match == "" || !doublestar.ValidatePattern(r.Match) {
			return o, optErr(field+".Match", "bad glob %q", r.Match)
		}
		if r.TTL == 0 && r.At.IsZero() {
			return o, optErr(field, "needs TTL or At")
		}
		if err := validateExpiration(field, desired.Expiration{TTL: r.TTL, At: r.At}); err != nil {
			return o, err
		}
	}
	if err := validateExpiration("DefaultExpiration", o.DefaultExpiration); err != nil {
		return o, err
	}
	if o.Quiet < 0 || o.MaxDelay < 0 {
		return o, optErr("Quiet/MaxDelay", "negative")
	}
	if o.Quiet == 0 {
		o.Quiet = DefaultQuiet
	}
	o.Quiet = max(o.Quiet, MinQuiet)
	if o.MaxDelay == 0 {
		o.MaxDelay = DefaultMaxDelay
	}
	o.MaxDelay = max(o.MaxDelay, o.Quiet)
	if o.RescanInterval == 0 {
		o.RescanInterval = DefaultRescanInterval
	}
	if o.FlushTimeout == 0 {
		o.FlushTimeout = DefaultFlushTimeout
	}
	if o.MaxFileSize < 0 {
		return o, optErr("MaxFileSize", "negative")
	}
	if o.MaxFileSize == 0 {
		o.MaxFileSize = kvapi.MaxValueBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// matchAny reports whether rel matches one of the (validated) globs.
func matchAny(globs []string, rel string) bool {
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, rel); ok {
			return true
		}
	}
	return false
}

// Skip reasons: the watcher's names for metrics' label values.
const (
	reasonExcluded   = metrics.SkipExcluded
	reasonDebris     = metrics.SkipDebris
	reasonKeyInvalid = metrics.SkipKeyInvalid
	reasonTooLarge   = metrics.SkipTooLarge
	reasonMetadata   = metrics.SkipMetadata
	reasonUnreadable = metrics.SkipUnreadable
	reasonSpecial    = metrics.SkipSpecial
	reasonSymlink    = metrics.SkipSymlink
	// reasonOrphan is logged but not counted: it is not a file kept from KV.
	reasonOrphan metrics.SkipReason = "orphan_sidecar"
)

// dirSkip says why a directory is not descended, or "" when it is.
func (o *Options) dirSkip(rel string) metrics.SkipReason {
	if matchAny(o.Exclude, rel) {
		return reasonExcluded
	}
	if !o.IncludeHidden && hiddenSegment(path.Base(rel)) {
		return reasonExcluded
	}
	return ""
}

// fileSkip says why a file (not a sidecar) is not published, or "" when it
// is. Its directories were already admitted by dirSkip.
func (o *Options) fileSkip(rel string) metrics.SkipReason {
	base := path.Base(rel)
	if matchAny(o.Exclude, rel) {
		return reasonExcluded
	}
	if !o.IncludeHidden && hiddenSegment(base) {
		return reasonExcluded
	}
	if !o.NoDefaultExcludes && isDebris(base) {
		return reasonDebris
	}
	if len(o.Include) > 0 && !matchAny(o.Include, rel) {
		return reasonExcluded
	}
	return ""
}

// pathSkip checks every ancestor of rel with dirSkip and rel itself with
// fileSkip; events carry a bare path and may come from anywhere.
func (o *Options) pathSkip(rel string) metrics.SkipReason {
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' {
			if r := o.dirSkip(rel[:i]); r != "" {
				return r
			}
		}
	}
	return o.fileSkip(rel)
}

func hiddenSegment(name string) bool {
	return strings.HasPrefix(name, ".") && name != ".well-known"
}

// expiration returns the expiration of the file at rel.
func (o *Options) expiration(rel string) desired.Expiration {
	for _, r := range o.ExpirationRules {
		if ok, _ := doublestar.Match(r.Match, rel); ok {
			return desired.Expiration{TTL: r.TTL, At: r.At}
		}
	}
	return o.DefaultExpiration
}
