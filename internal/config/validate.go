package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/uploader"
)

// MaxConcurrency is the most API requests a process keeps in flight
// (api.concurrency, --concurrency); the least is 1.
const MaxConcurrency = 64

// Limits Validate enforces.
const (
	// The account's budget (api.budget) is counted per rateWindowSeconds.
	rateWindowSeconds = float64(kvapi.BudgetWindow / time.Second)
	maxConcurrency    = MaxConcurrency
	// maxIDLength is the schema's maxLength for account and namespace ids.
	maxIDLength = 32
	minTTL      = kvapi.MinTTLSeconds * time.Second
	// maxBulkValueBytes is the largest file whose base64 form fits the bulk
	// API's value limit (kvapi.MaxValueBytes): binary values travel
	// base64-encoded there.
	maxBulkValueBytes = kvapi.MaxValueBytes / 4 * 3
)

// Validate checks every value and every combination, returning all problems
// at once (joined), each a *FieldError naming the field and, when known,
// the file line, flag or environment variable it came from. It does not
// touch the filesystem: a missing dir is the watcher's concern (it may be
// mounted later), and credentials are checked by ResolveCredentials.
func (c *Config) Validate() error {
	v := &validator{src: c.src, now: time.Now()}
	v.oneOf("log_level", c.LogLevel, "debug", "info", "warn", "error")
	v.oneOf("log_format", c.LogFormat, "text", "json")
	if c.StateDir == "" {
		v.fail("state_dir", ErrRequired, "required: no default applies ($STATE_DIRECTORY, root, $XDG_STATE_HOME and $HOME are all unset); set state_dir or --state-dir")
	}
	v.path("state_dir", c.StateDir)
	v.listen("metrics_listen", c.MetricsListen)
	v.api(&c.API)

	if len(c.Syncs) == 0 {
		v.fail("syncs", ErrRequired, "at least one sync (dir and namespace_id) is required")
	}
	for i := range c.Syncs {
		v.sync(indexPath("syncs", i), &c.Syncs[i])
	}
	v.crossSync(c.Syncs)
	v.leader(c)
	return errors.Join(v.errs...)
}

type validator struct {
	src  *sources
	errs []error
	// now is when an absolute expiration must still be ahead of.
	now time.Time
}

func (v *validator) fail(path string, kind error, format string, args ...any) {
	v.failAt(path, path, kind, format, args...)
}

// failAt reports a problem with field at the source of the value at where.
func (v *validator) failAt(where, field string, kind error, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Source: v.src.lookup(where), Field: field, Msg: fmt.Sprintf(format, args...), Kind: kind})
}

func (v *validator) oneOf(path, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.fail(path, ErrInvalid, "%q is not one of %s", val, strings.Join(allowed, ", "))
}

func (v *validator) path(path, val string) {
	if strings.HasPrefix(val, "~") {
		v.fail(path, ErrInvalid, "%q: ~ is not expanded (no shell reads this); write the absolute path", val)
	}
}

func (v *validator) listen(path, val string) {
	if val == "" || val == "off" {
		return
	}
	_, port, err := net.SplitHostPort(val)
	if err != nil {
		v.fail(path, ErrInvalid, "%q is not host:port (such as 127.0.0.1:9464), or off to disable", val)
		return
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p > math.MaxUint16 {
		v.fail(path, ErrInvalid, "%q: port %q is not a number from 0 to 65535", val, port)
	}
}

func (v *validator) id(path, val, hint string) {
	switch {
	case val == "":
		v.fail(path, ErrRequired, "required: %s", hint)
	case len(val) > maxIDLength:
		v.fail(path, ErrInvalid, "%q is %d characters; ids have at most %d", val, len(val), maxIDLength)
	case strings.IndexFunc(val, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0:
		// The id becomes a URL path segment; anything else is a mistake.
		v.fail(path, ErrInvalid, "%q has characters other than letters, digits, - and _", val)
	}
}

func (v *validator) api(a *API) {
	v.baseURL("api.base_url", a.BaseURL)
	v.id("api.account_id", a.AccountID, "set api.account_id, --account-id or $CLOUDFLARE_ACCOUNT_ID")
	v.path("api.token_file", a.TokenFile)
	v.path("api.ca_file", a.CAFile)

	rateOK := true
	switch {
	case math.IsNaN(a.Rate) || math.IsInf(a.Rate, 0) || a.Rate <= 0:
		v.fail("api.rate", ErrInvalid, "%v requests per second: must be above 0", a.Rate)
		rateOK = false
	}
	if a.Burst < 1 {
		v.fail("api.burst", ErrInvalid, "%d: must be at least 1", a.Burst)
		rateOK = false
	}
	if a.Budget < 1 {
		v.fail("api.budget", ErrInvalid, "%d requests per 5 minutes: must be at least 1", a.Budget)
		rateOK = false
	}
	if rateOK {
		if window := a.Rate*rateWindowSeconds + float64(a.Burst); window > float64(a.Budget) {
			where := "api.rate"
			if !v.src.has(where) && v.src.has("api.burst") {
				where = "api.burst"
			}
			v.failAt(where, "api.rate, api.burst", ErrConflict,
				"rate×300 + burst = %s + %d = %s requests per 5 minutes, over the account's budget of %d per 5 minutes (api.budget; Cloudflare's is %d unless raised for the account, and going over blocks the token for 5 minutes); lower rate or burst",
				strconv.FormatFloat(a.Rate*rateWindowSeconds, 'f', -1, 64), a.Burst, strconv.FormatFloat(window, 'f', -1, 64), a.Budget, kvapi.AccountBudget)
		}
	}
	if a.Concurrency < 1 || a.Concurrency > maxConcurrency {
		v.fail("api.concurrency", ErrInvalid, "%d is outside 1..%d", a.Concurrency, maxConcurrency)
	}
	if a.Timeout <= 0 {
		v.fail("api.timeout", ErrInvalid, "%s: must be above 0", formatDuration(a.Timeout))
	}
	if a.MaxRetries < 0 {
		v.fail("api.max_retries", ErrInvalid, "%d is negative; 0 disables retries", a.MaxRetries)
	}
}

func (v *validator) baseURL(path, raw string) {
	if raw == "" {
		v.fail(path, ErrRequired, "required: the API root, such as %s", defaultBaseURL)
		return
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		v.fail(path, ErrInvalid, "%q is not an http(s) URL such as %s", raw, defaultBaseURL)
		return
	}
	switch {
	case u.User != nil:
		// Never echo the URL: its userinfo may hold a password.
		v.fail(path, ErrInvalid, "must not contain a user name or password; credentials come from the token")
	case u.RawQuery != "" || u.Fragment != "":
		v.fail(path, ErrInvalid, "%q: a base URL has no query or fragment", raw)
	case u.Scheme == "http" && !isLoopback(u.Hostname()):
		v.fail(path, ErrInvalid, "%q: http:// would send the API token in clear text; use https:// (http is accepted only for loopback hosts such as 127.0.0.1, for the local emulator)", raw)
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (v *validator) sync(p string, s *Sync) {
	if s.Name == "" {
		v.fail(p+".name", ErrRequired, "required (it defaults to the last element of dir)")
	} else if strings.IndexFunc(s.Name, func(r rune) bool { return !validNameRune(r) }) >= 0 {
		v.fail(p+".name", ErrInvalid, "%q has characters other than letters, digits, ., - and _", s.Name)
	}
	if s.Dir == "" {
		v.fail(p+".dir", ErrRequired, "required: the directory to publish")
	}
	v.path(p+".dir", s.Dir)
	v.id(p+".namespace_id", s.NamespaceID, "the id of the KV namespace to write to")
	if len(s.Prefix) >= kvapi.MaxKeyBytes {
		v.fail(p+".prefix", ErrInvalid, "is %d bytes; a key, prefix included, is at most %d bytes", len(s.Prefix), kvapi.MaxKeyBytes)
	}
	for i, pat := range s.Include {
		v.glob(indexPath(p+".include", i), pat)
	}
	for i, pat := range s.Exclude {
		v.glob(indexPath(p+".exclude", i), pat)
	}
	for i := range s.Expiration {
		rp := indexPath(p+".expiration", i)
		r := &s.Expiration[i]
		if r.Match == "" {
			v.fail(rp+".match", ErrRequired, "required: a glob over the path relative to dir")
		} else {
			v.glob(rp+".match", r.Match)
		}
		v.expiration(rp, r, true)
	}
	dp := p + ".default_expiration"
	if s.DefaultExpiration.Match != "" {
		v.fail(dp+".match", ErrInvalid, "default_expiration applies to files no rule matched and takes no match; add a rule to expiration instead")
	}
	v.expiration(dp, &s.DefaultExpiration, false)

	policies := make([]string, len(uploader.DeletePolicies))
	for i, d := range uploader.DeletePolicies {
		policies[i] = string(d)
	}
	v.oneOf(p+".delete", string(s.Delete), policies...)
	v.ttl(p+".delete_ttl", s.DeleteTTL)
	if s.MaxDeletes < -1 {
		v.fail(p+".max_deletes", ErrInvalid, "%d: use -1 for no cap, 0 to allow no deletions, or a positive cap", s.MaxDeletes)
	}
	if s.Quiet <= 0 {
		v.fail(p+".quiet", ErrInvalid, "%s: must be above 0", formatDuration(s.Quiet))
	}
	if s.MaxDelay <= 0 {
		v.fail(p+".max_delay", ErrInvalid, "%s: must be above 0", formatDuration(s.MaxDelay))
	} else if s.Quiet > 0 && s.MaxDelay < s.Quiet {
		v.fail(p+".max_delay", ErrConflict, "%s is shorter than quiet (%s)", formatDuration(s.MaxDelay), formatDuration(s.Quiet))
	}
	if s.RescanInterval < 0 {
		v.fail(p+".rescan_interval", ErrInvalid, "%s is negative; 0 disables rescans", formatDuration(s.RescanInterval))
	}
	if s.ListInterval < 0 {
		v.fail(p+".list_interval", ErrInvalid, "%s is negative; 0 lists at every full sync", formatDuration(s.ListInterval))
	}

	switch {
	case s.BulkThreshold < 0:
		v.fail(p+".bulk_threshold", ErrInvalid, "%d is negative; 0 disables bulk writes", s.BulkThreshold)
	case s.BulkThreshold > maxBulkValueBytes:
		v.fail(p+".bulk_threshold", ErrInvalid, "%s is over %s: binary values travel base64-encoded in bulk requests, which must stay within the API's %d MiB per value", FormatSize(s.BulkThreshold), FormatSize(maxBulkValueBytes), kvapi.MaxValueBytes>>20)
	case s.BulkMaxBytes > 0 && s.BulkThreshold > s.BulkMaxBytes:
		v.fail(p+".bulk_threshold", ErrConflict, "%s is larger than bulk_max_bytes (%s)", FormatSize(s.BulkThreshold), FormatSize(s.BulkMaxBytes))
	}
	switch {
	case s.BulkMaxBytes <= 0:
		v.fail(p+".bulk_max_bytes", ErrInvalid, "%d: must be above 0", s.BulkMaxBytes)
	case s.BulkMaxBytes > kvapi.MaxBulkRequestBytes:
		v.fail(p+".bulk_max_bytes", ErrInvalid, "%s is over the API's %d MB (%d bytes) per bulk request", FormatSize(s.BulkMaxBytes), kvapi.MaxBulkRequestBytes/1_000_000, kvapi.MaxBulkRequestBytes)
	}
}

func (v *validator) glob(path, pat string) {
	switch {
	case pat == "":
		v.fail(path, ErrInvalid, "empty pattern")
	case strings.HasPrefix(pat, "/"):
		v.fail(path, ErrInvalid, "%q starts with /, but patterns match paths relative to dir (write %q)", pat, strings.TrimLeft(pat, "/"))
	case !doublestar.ValidatePattern(pat):
		v.fail(path, ErrInvalid, "%q is not a valid glob (unbalanced [ ] or { }, or a trailing \\)", pat)
	}
}

// expiration checks one rule; requireOne is false for default_expiration,
// where neither ttl nor at means "never expires".
func (v *validator) expiration(p string, r *ExpirationRule, requireOne bool) {
	hasTTL, hasAt := r.TTL != 0, !r.At.IsZero()
	switch {
	case hasTTL && hasAt:
		v.fail(p, ErrConflict, "set ttl or at, not both")
	case !hasTTL && !hasAt && requireOne:
		v.fail(p, ErrRequired, "set one of ttl (such as 7d) or at (such as 2030-01-01T00:00:00Z)")
	}
	if hasTTL {
		v.ttl(p+".ttl", r.TTL)
	}
	if hasAt && r.At.Nanosecond() != 0 {
		v.fail(p+".at", ErrInvalid, "%s is not a whole second (KV expirations are in seconds)", r.At.Format(time.RFC3339Nano))
	}
	// KV refuses an expiration less than a minute ahead: every file the
	// rule matches would be refused, so the config is, once, here.
	if hasAt && r.At.Before(v.now.Add(kvapi.MinExpirationAheadSeconds*time.Second)) {
		v.fail(p+".at", ErrInvalid, "%s has passed or is less than %d s away (KV refuses such an expiration); move it ahead, use ttl, or remove the rule",
			r.At.Format(time.RFC3339), kvapi.MinExpirationAheadSeconds)
	}
}

func (v *validator) ttl(path string, d time.Duration) {
	switch {
	case d < 0:
		v.fail(path, ErrInvalid, "%s is negative", formatDuration(d))
	case d < minTTL:
		v.fail(path, ErrInvalid, "%s is under the %d s minimum", formatDuration(d), kvapi.MinTTLSeconds)
	case d%time.Second != 0:
		v.fail(path, ErrInvalid, "%s is not a whole number of seconds (KV expirations are in seconds)", formatDuration(d))
	}
}

// crossSync rejects duplicate names and syncs whose keys could collide: a
// sync deletes the keys under its prefix that its tree lacks, so two syncs
// sharing a namespace must own disjoint key ranges or they would delete (or
// overwrite) each other's keys.
func (v *validator) crossSync(syncs []Sync) {
	names := map[string]int{}
	for i, s := range syncs {
		p := indexPath("syncs", i)
		if s.Name != "" {
			if j, dup := names[s.Name]; dup {
				how := ""
				if !v.src.has(p + ".name") {
					how = " (derived from dir; set name to tell them apart)"
				}
				v.fail(p+".name", ErrConflict, "%q is already the name of syncs[%d]%s", s.Name, j, how)
			} else {
				names[s.Name] = i
			}
		}
		for j := range i {
			o := syncs[j]
			if o.NamespaceID == "" || o.NamespaceID != s.NamespaceID {
				continue
			}
			if strings.HasPrefix(s.Prefix, o.Prefix) || strings.HasPrefix(o.Prefix, s.Prefix) {
				v.fail(p+".prefix", ErrConflict, "keys under prefix %q in namespace %s overlap those of syncs[%d] (prefix %q): each sync would delete or overwrite the other's keys; give them disjoint prefixes",
					s.Prefix, s.NamespaceID, j, o.Prefix)
			}
		}
	}
}
