package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/uploader"
)

// y joins lines so that a test's line numbers are the slice positions + 1.
func y(lines ...string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }

// fieldErrors flattens a (joined) error into its *FieldErrors.
func fieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

func TestDefaults(t *testing.T) {
	c := Default()
	if c.LogLevel != "info" || c.LogFormat != "text" || c.MetricsListen != "127.0.0.1:9464" {
		t.Errorf("top-level defaults: %+v", c)
	}
	// systemd's $STATE_DIRECTORY wins for every user (its first entry);
	// TestDefaultStateDir covers the other sources.
	t.Setenv("STATE_DIRECTORY", "/var/lib/kvsync-test:/var/lib/other")
	if got := Default().StateDir; got != "/var/lib/kvsync-test" {
		t.Errorf("StateDir = %q, want /var/lib/kvsync-test from $STATE_DIRECTORY", got)
	}
	wantAPI := API{BaseURL: "https://api.cloudflare.com/client/v4", Rate: 1000.0 / 300, Burst: 100, Budget: 1200, Concurrency: 4, Timeout: 5 * time.Minute, MaxRetries: 5}
	if c.API != wantAPI {
		t.Errorf("API defaults = %+v, want %+v", c.API, wantAPI)
	}
	if got := c.API.Rate*300 + float64(c.API.Burst); got > 1200 {
		t.Errorf("default rate budget %v exceeds 1200", got)
	}
	s := DefaultSync()
	want := Sync{DefaultExcludes: true, Delete: uploader.DeleteRemove, DeleteTTL: time.Hour, MaxDeletes: 1000, Quiet: time.Second,
		MaxDelay: 10 * time.Second, RescanInterval: time.Hour, BulkThreshold: 1 << 20, BulkMaxBytes: 8 << 20,
		RecordInMetadata: true, ListInterval: 6 * time.Hour}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("DefaultSync = %+v, want %+v", s, want)
	}
	if len(c.Syncs) != 0 {
		t.Errorf("Default has syncs: %+v", c.Syncs)
	}
}

func TestDefaultStateDir(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		euid int
		want string
	}{
		{"systemd", map[string]string{"STATE_DIRECTORY": "/var/lib/kvsync-sd", "HOME": "/home/u"}, 1000, "/var/lib/kvsync-sd"},
		{"systemd several", map[string]string{"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, 0, "/var/lib/a"},
		{"root", map[string]string{"HOME": "/root", "XDG_STATE_HOME": "/x"}, 0, "/var/lib/kvsync"},
		{"xdg", map[string]string{"XDG_STATE_HOME": "/home/u/.st", "HOME": "/home/u"}, 1000, "/home/u/.st/kvsync"},
		{"relative xdg ignored", map[string]string{"XDG_STATE_HOME": "rel", "HOME": "/home/u"}, 1000, "/home/u/.local/state/kvsync"},
		{"home", map[string]string{"HOME": "/home/u"}, 1000, "/home/u/.local/state/kvsync"},
		{"nothing", nil, 1000, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := DefaultStateDir(func(k string) string { return tc.env[k] }, tc.euid); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseFillsDefaultsAndResolvesPaths(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "etc")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sub, "kvsync.yaml")
	data := y(
		"state_dir: state",
		"api:",
		"  account_id: acc",
		"  token_file: secrets/token",
		"  ca_file: /etc/ssl/ca.pem",
		"syncs:",
		"  - dir: ../My Site!",
		"    namespace_id: ns1",
		"  - dir: /srv/www",
		"    name: explicit",
		"    namespace_id: ns2",
	)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "My Site!"); c.Syncs[0].Dir != want {
		t.Errorf("dir = %q, want %q (relative to the config file)", c.Syncs[0].Dir, want)
	}
	if want := filepath.Join(sub, "state"); c.StateDir != want {
		t.Errorf("state_dir = %q, want %q", c.StateDir, want)
	}
	if want := filepath.Join(sub, "secrets", "token"); c.API.TokenFile != want {
		t.Errorf("token_file = %q, want %q", c.API.TokenFile, want)
	}
	if c.API.CAFile != "/etc/ssl/ca.pem" {
		t.Errorf("ca_file = %q", c.API.CAFile)
	}
	if c.Syncs[0].Name != "My-Site" || c.Syncs[1].Name != "explicit" {
		t.Errorf("names = %q, %q", c.Syncs[0].Name, c.Syncs[1].Name)
	}
	// Everything not written in the file keeps its default.
	got := c.Syncs[1]
	got.Name, got.Dir, got.NamespaceID = "", "", ""
	if !reflect.DeepEqual(got, DefaultSync()) {
		t.Errorf("sync defaults = %+v, want %+v", got, DefaultSync())
	}
	if c.API.BaseURL != defaultBaseURL || c.API.Concurrency != 4 || c.LogLevel != "info" {
		t.Errorf("defaults not filled: %+v", c)
	}
}

func TestParseValues(t *testing.T) {
	c, err := Parse(y(
		"state_dir: /s",
		"metrics_listen: \"off\"",
		"api:",
		"  base_url: http://[::1]:8787/client/v4",
		"  account_id: acc",
		"  rate: 2",
		"  burst: 600",
		"  timeout: 90s",
		"  max_retries: 0",
		"syncs:",
		"  - dir: /a",
		"    namespace_id: 0123456789",
		"    prefix: a/",
		"    include: ['**/*.html', '{css,js}/**']",
		"    default_excludes: false",
		"    include_hidden: true",
		"    expiration:",
		"      - {match: 'tmp/**', ttl: 1d12h}",
		"      - match: 'x/*'",
		"        at: 2030-01-02T03:04:05+01:00",
		"    default_expiration: {ttl: 30d}",
		"    delete: expire",
		"    delete_ttl: 2m",
		"    max_deletes: -1",
		"    rescan_interval: 0",
		"    bulk_threshold: 0",
		"    bulk_max_bytes: 100MB",
		"  - dir: /b",
		"    namespace_id: 0123456789",
		"    prefix: b/",
		"    bulk_threshold: 1_048_576",
		"    bulk_max_bytes: 512KiB",
	), "kvsync.yaml")
	if err == nil {
		t.Fatal("bulk_threshold 1 MiB over bulk_max_bytes 512 KiB was accepted")
	}
	fes := fieldErrors(err)
	if len(fes) != 1 || fes[0].Field != "syncs[1].bulk_threshold" || fes[0].Source.Line != 31 {
		t.Fatalf("want exactly the bulk_threshold conflict at line 31, got %v", err)
	}
	s := c.Syncs[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"metrics", c.MetricsEnabled(), false},
		{"rate", c.API.Rate, 2.0},
		{"burst", c.API.Burst, 600},
		{"timeout", c.API.Timeout, 90 * time.Second},
		{"retries", c.API.MaxRetries, 0},
		{"namespace digits kept as text", s.NamespaceID, "0123456789"},
		{"include", s.Include, []string{"**/*.html", "{css,js}/**"}},
		{"default_excludes", s.DefaultExcludes, false},
		{"include_hidden", s.IncludeHidden, true},
		{"ttl days", s.Expiration[0].TTL, 36 * time.Hour},
		{"at in UTC", s.Expiration[1].At, time.Date(2030, 1, 2, 2, 4, 5, 0, time.UTC)},
		{"default ttl", s.DefaultExpiration, ExpirationRule{TTL: 30 * 24 * time.Hour}},
		{"delete", s.Delete, uploader.DeleteExpire},
		{"delete_ttl", s.DeleteTTL, 2 * time.Minute},
		{"max_deletes", s.MaxDeletes, -1},
		{"rescan", s.RescanInterval, time.Duration(0)},
		{"bulk_threshold", s.BulkThreshold, int64(0)},
		{"bulk_max_bytes", s.BulkMaxBytes, int64(100_000_000)},
		{"yaml int size", c.Syncs[1].BulkThreshold, int64(1 << 20)},
		{"KiB", c.Syncs[1].BulkMaxBytes, int64(512 << 10)},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
}

// TestValidationErrors: every rejected value is reported with its field path
// and the line it is on (or, when it was left out, the line of its block).
func TestValidationErrors(t *testing.T) {
	head := []string{"api:", "  account_id: acc", "syncs:", "  - dir: /srv/a", "    namespace_id: ns"}
	with := func(extra ...string) []byte { return y(append(append([]string{}, head...), extra...)...) }
	cases := []struct {
		name  string
		data  []byte
		field string
		line  int
		kind  error
		msg   string
	}{
		{"unknown top-level field", y("log_levl: info"), "log_levl", 1, ErrUnknownField, "unknown field; valid here: api, leader_election, log_format, log_level"},
		{"unknown sync field", with("    exclud: ['*.tmp']"), "syncs[0].exclud", 6, ErrUnknownField, "valid here:"},
		{"unknown expiration field", with("    expiration:", "      - match: '*'", "        ttl_seconds: 60"), "syncs[0].expiration[0].ttl_seconds", 8, ErrUnknownField, "at, match, ttl"},
		{"key set twice", with("    prefix: a/", "    prefix: b/"), "syncs[0].prefix", 7, ErrConflict, "set twice (first on line 6)"},
		{"merge key", with("    <<: {prefix: a}"), "syncs[0].<<", 6, ErrUnknownField, "merge keys"},
		{"string for int", with("    max_deletes: many"), "syncs[0].max_deletes", 6, ErrInvalid, `want an integer, not "many"`},
		{"scalar for list", with("    include: '*.html'"), "syncs[0].include", 6, ErrInvalid, "want a list"},
		{"list for string", with("    prefix: [a]"), "syncs[0].prefix", 6, ErrInvalid, "want a string, not a list"},
		{"not a bool", with("    include_hidden: maybe"), "syncs[0].include_hidden", 6, ErrInvalid, "want true or false"},
		{"mapping for sync list", y("syncs: {dir: /a}"), "syncs", 1, ErrInvalid, "want a list, not a mapping"},
		{"log level", with("log_level: verbose"), "log_level", 6, ErrInvalid, `"verbose" is not one of debug, info, warn, error`},
		{"log format", with("log_format: xml"), "log_format", 6, ErrInvalid, "not one of text, json"},
		{"state dir tilde", with("state_dir: ~/state"), "state_dir", 6, ErrInvalid, "~ is not expanded"},
		{"metrics listen", with("metrics_listen: localhost"), "metrics_listen", 6, ErrInvalid, "is not host:port"},
		{"metrics port", with("metrics_listen: 127.0.0.1:99999"), "metrics_listen", 6, ErrInvalid, "not a number from 0 to 65535"},
		{"base url scheme", y("api:", "  base_url: ftp://api.example.com", "  account_id: a", "syncs: [{dir: /a, namespace_id: n}]"), "api.base_url", 2, ErrInvalid, "not an http(s) URL"},
		{"base url http remote", y("api:", "  base_url: http://api.cloudflare.com/client/v4", "  account_id: a", "syncs: [{dir: /a, namespace_id: n}]"), "api.base_url", 2, ErrInvalid, "clear text"},
		{"base url query", y("api:", "  base_url: https://h/v4?x=1", "  account_id: a", "syncs: [{dir: /a, namespace_id: n}]"), "api.base_url", 2, ErrInvalid, "no query"},
		{"account missing", y("api:", "  rate: 1", "syncs: [{dir: /a, namespace_id: n}]"), "api.account_id", 1, ErrRequired, "CLOUDFLARE_ACCOUNT_ID"},
		{"account too long", y("api: {account_id: 0123456789abcdef0123456789abcdef0}", "syncs: [{dir: /a, namespace_id: n}]"), "api.account_id", 1, ErrInvalid, "33 characters; ids have at most 32"},
		{"rate budget", y("api:", "  account_id: a", "  rate: 4", "  burst: 1", "syncs: [{dir: /a, namespace_id: n}]"), "api.rate, api.burst", 3, ErrConflict, "= 1201 requests per 5 minutes, over the account's budget of 1200 per 5 minutes"},
		{"over a raised budget", y("api:", "  account_id: a", "  rate: 100", "  budget: 30000", "syncs: [{dir: /a, namespace_id: n}]"), "api.rate, api.burst", 3, ErrConflict, "over the account's budget of 30000"},
		{"burst alone over budget", y("api:", "  account_id: a", "  burst: 201", "syncs: [{dir: /a, namespace_id: n}]"), "api.rate, api.burst", 3, ErrConflict, "over the account's budget of 1200"},
		{"rate zero", y("api:", "  account_id: a", "  rate: 0", "syncs: [{dir: /a, namespace_id: n}]"), "api.rate", 3, ErrInvalid, "must be above 0"},
		{"rate nan", y("api:", "  account_id: a", "  rate: .nan", "syncs: [{dir: /a, namespace_id: n}]"), "api.rate", 3, ErrInvalid, "finite"},
		{"burst zero", y("api:", "  account_id: a", "  burst: 0", "syncs: [{dir: /a, namespace_id: n}]"), "api.burst", 3, ErrInvalid, "at least 1"},
		{"concurrency negative", y("api:", "  account_id: a", "  concurrency: -1", "syncs: [{dir: /a, namespace_id: n}]"), "api.concurrency", 3, ErrInvalid, "-1 is outside 1..64"},
		{"concurrency too high", y("api:", "  account_id: a", "  concurrency: 65", "syncs: [{dir: /a, namespace_id: n}]"), "api.concurrency", 3, ErrInvalid, "65 is outside 1..64"},
		{"timeout zero", y("api:", "  account_id: a", "  timeout: 0s", "syncs: [{dir: /a, namespace_id: n}]"), "api.timeout", 3, ErrInvalid, "must be above 0"},
		{"max retries negative", y("api:", "  account_id: a", "  max_retries: -3", "syncs: [{dir: /a, namespace_id: n}]"), "api.max_retries", 3, ErrInvalid, "negative"},
		{"token file tilde", y("api:", "  account_id: a", "  token_file: ~/.cf", "syncs: [{dir: /a, namespace_id: n}]"), "api.token_file", 3, ErrInvalid, "~ is not expanded"},
		{"no syncs", y("api: {account_id: a}", "syncs: []"), "syncs", 2, ErrRequired, "at least one sync"},
		{"syncs absent", y("api: {account_id: a}"), "syncs", 1, ErrRequired, "at least one sync"},
		{"dir missing", y("api: {account_id: a}", "syncs:", "  - namespace_id: n"), "syncs[0].dir", 3, ErrRequired, "required"},
		{"dir tilde", y("api: {account_id: a}", "syncs:", "  - namespace_id: n", "    dir: ~/www"), "syncs[0].dir", 4, ErrInvalid, "~ is not expanded"},
		{"namespace missing", y("api: {account_id: a}", "syncs:", "  - dir: /a"), "syncs[0].namespace_id", 3, ErrRequired, "required"},
		{"namespace with slash", y("api: {account_id: a}", "syncs:", "  - dir: /a", "    namespace_id: a/b"), "syncs[0].namespace_id", 4, ErrInvalid, "characters other than"},
		{"name chars", with("    name: my site"), "syncs[0].name", 6, ErrInvalid, `"my site" has characters other than`},
		{"prefix too long", with("    prefix: " + strings.Repeat("p", 512)), "syncs[0].prefix", 6, ErrInvalid, "512 bytes"},
		{"bad glob", with("    include: ['ok/**', '[abc']"), "syncs[0].include[1]", 6, ErrInvalid, `"[abc" is not a valid glob`},
		{"absolute glob", with("    exclude:", "      - /drafts/**"), "syncs[0].exclude[0]", 7, ErrInvalid, `write "drafts/**"`},
		{"empty glob", with("    exclude: ['']"), "syncs[0].exclude[0]", 6, ErrInvalid, "empty pattern"},
		{"ttl under minimum", with("    expiration:", "      - match: '*'", "        ttl: 1h", "      - match: 'b/*'", "        ttl: 59s"), "syncs[0].expiration[1].ttl", 10, ErrInvalid, "59s is under the 60 s minimum"},
		{"ttl without unit", with("    expiration:", "      - match: '*'", "        ttl: 3600"), "syncs[0].expiration[0].ttl", 8, ErrInvalid, "has no unit; write 3600s"},
		{"ttl fraction", with("    expiration:", "      - match: '*'", "        ttl: 90.5s"), "syncs[0].expiration[0].ttl", 8, ErrInvalid, "not a whole number of seconds"},
		{"ttl negative", with("    expiration:", "      - match: '*'", "        ttl: -2h"), "syncs[0].expiration[0].ttl", 8, ErrInvalid, "-2h0m0s is negative"},
		{"ttl garbage", with("    expiration:", "      - match: '*'", "        ttl: soon"), "syncs[0].expiration[0].ttl", 8, ErrInvalid, `"soon" is not a duration`},
		{"at not rfc3339", with("    expiration:", "      - match: '*'", "        at: 2030-01-01"), "syncs[0].expiration[0].at", 8, ErrInvalid, "not an RFC 3339 time"},
		{"at past", with("    expiration:", "      - match: '*'", "        at: 2020-01-01T00:00:00Z"), "syncs[0].expiration[0].at", 8, ErrInvalid, "has passed"},
		{"at fractional", with("    expiration:", "      - match: '*'", "        at: 2030-01-01T00:00:00.5Z"), "syncs[0].expiration[0].at", 8, ErrInvalid, "not a whole second"},
		{"ttl and at", with("    expiration:", "      - match: '*'", "        ttl: 1h", "        at: 2030-01-01T00:00:00Z"), "syncs[0].expiration[0]", 7, ErrConflict, "not both"},
		{"neither ttl nor at", with("    expiration:", "      - match: '*'"), "syncs[0].expiration[0]", 7, ErrRequired, "set one of ttl"},
		{"rule without match", with("    expiration:", "      - ttl: 1h"), "syncs[0].expiration[0].match", 7, ErrRequired, "required"},
		{"rule bad match", with("    expiration:", "      - {match: '{a', ttl: 1h}"), "syncs[0].expiration[0].match", 7, ErrInvalid, "not a valid glob"},
		{"default expiration match", with("    default_expiration: {match: '*', ttl: 1h}"), "syncs[0].default_expiration.match", 6, ErrInvalid, "takes no match"},
		{"default expiration ttl", with("    default_expiration:", "      ttl: 30s"), "syncs[0].default_expiration.ttl", 7, ErrInvalid, "30s is under the 60 s minimum"},
		{"delete policy", with("    delete: remove"), "syncs[0].delete", 6, ErrInvalid, `"remove" is not one of delete, keep, expire`},
		{"delete ttl", with("    delete: expire", "    delete_ttl: 30s"), "syncs[0].delete_ttl", 7, ErrInvalid, "under the 60 s minimum"},
		{"max deletes", with("    max_deletes: -2"), "syncs[0].max_deletes", 6, ErrInvalid, "use -1 for no cap"},
		{"quiet negative", with("    quiet: -1s"), "syncs[0].quiet", 6, ErrInvalid, "must be above 0"},
		{"max delay under quiet", with("    quiet: 5s", "    max_delay: 2s"), "syncs[0].max_delay", 7, ErrConflict, "2s is shorter than quiet (5s)"},
		{"rescan negative", with("    rescan_interval: -1h"), "syncs[0].rescan_interval", 6, ErrInvalid, "negative; 0 disables"},
		{"bulk threshold too big", with("    bulk_threshold: 20MiB", "    bulk_max_bytes: 64MiB"), "syncs[0].bulk_threshold", 6, ErrInvalid, "20MiB is over"},
		{"bulk threshold over max bytes", with("    bulk_threshold: 2MiB", "    bulk_max_bytes: 1MiB"), "syncs[0].bulk_threshold", 6, ErrConflict, "larger than bulk_max_bytes (1MiB)"},
		{"bulk threshold negative", with("    bulk_threshold: -1"), "syncs[0].bulk_threshold", 6, ErrInvalid, "negative"},
		{"bulk max bytes over API limit", with("    bulk_max_bytes: 101MB"), "syncs[0].bulk_max_bytes", 6, ErrInvalid, "over the API's 100 MB"},
		{"bulk max bytes zero", with("    bulk_threshold: 0", "    bulk_max_bytes: 0"), "syncs[0].bulk_max_bytes", 7, ErrInvalid, "must be above 0"},
		{"size unit", with("    bulk_max_bytes: 3XB"), "syncs[0].bulk_max_bytes", 6, ErrInvalid, `unknown unit "XB"`},
		{"size fraction", with("    bulk_max_bytes: 1.5B"), "syncs[0].bulk_max_bytes", 6, ErrInvalid, "not a whole number of bytes"},
		{"duplicate names", with("    name: web", "  - dir: /srv/b", "    name: web", "    namespace_id: other"), "syncs[1].name", 8, ErrConflict, `"web" is already the name of syncs[0]`},
		{"duplicate derived names", y("api: {account_id: a}", "syncs:", "  - {dir: /x/site, namespace_id: n1}", "  - {dir: /y/site, namespace_id: n2}"), "syncs[1].name", 4, ErrConflict, "derived from dir"},
		{"same namespace and prefix", with("  - dir: /srv/b", "    namespace_id: ns"), "syncs[1].prefix", 6, ErrConflict, "overlap those of syncs[0]"},
		{"nested prefixes", y("api: {account_id: a}", "syncs:", "  - {dir: /a, namespace_id: n, prefix: a/}", "  - {dir: /b, namespace_id: n, prefix: a/b/}"), "syncs[1].prefix", 4, ErrConflict, `prefix "a/b/" in namespace n overlap those of syncs[0] (prefix "a/")`},
		{"syntax error", y("api:", "  account_id: a", " syncs: ["), "", 2, ErrSyntax, "did not find expected key"},
		{"two documents", y("api: {account_id: a}", "---", "syncs: []"), "", 2, ErrSyntax, "second YAML document"},
		{"top level not a mapping", y("- a", "- b"), "", 1, ErrInvalid, "want a mapping of"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.data, "kvsync.yaml")
			if err == nil {
				t.Fatal("accepted")
			}
			var found *FieldError
			for _, fe := range fieldErrors(err) {
				if fe.Field == tc.field {
					found = fe
					break
				}
			}
			if found == nil {
				t.Fatalf("no error for field %q in:\n%v", tc.field, err)
			}
			if found.Source.File != "kvsync.yaml" || found.Source.Line != tc.line {
				t.Errorf("source = %+v, want kvsync.yaml line %d", found.Source, tc.line)
			}
			if !errors.Is(found, tc.kind) {
				t.Errorf("kind = %v, want %v", found.Kind, tc.kind)
			}
			prefix := "kvsync.yaml:" + strconv.Itoa(tc.line) + ": "
			if tc.field != "" {
				prefix += tc.field + ": "
			}
			if !strings.HasPrefix(found.Error(), prefix) || !strings.Contains(found.Error(), tc.msg) {
				t.Errorf("message %q, want prefix %q and %q", found.Error(), prefix, tc.msg)
			}
			if !strings.Contains(err.Error(), found.Error()) {
				t.Errorf("joined error %q lacks %q", err, found.Error())
			}
		})
	}
}

func TestValidConfigs(t *testing.T) {
	// sync is what a sync loads as: the defaults, plus what the case set.
	sync := func(name, dir, ns, prefix string) Sync {
		s := DefaultSync()
		s.Name, s.Dir, s.NamespaceID, s.Prefix = name, dir, ns, prefix
		return s
	}
	cases := []struct {
		name string
		data []byte
		// check looks at what was loaded, beyond "no error".
		check func(t *testing.T, c Config)
	}{
		{"minimal", y("api: {account_id: a}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			checkSyncs(t, c, sync("a", "/a", "n", ""))
			if c.API.AccountID != "a" || c.API.BaseURL != "https://api.cloudflare.com/client/v4" {
				t.Errorf("api = %+v", c.API)
			}
		}},
		{"http loopback", y("api: {account_id: a, base_url: 'http://localhost:8787/client/v4'}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			if c.API.BaseURL != "http://localhost:8787/client/v4" {
				t.Errorf("base_url = %q", c.API.BaseURL)
			}
		}},
		{"http 127.x", y("api: {account_id: a, base_url: 'http://127.0.0.2/client/v4'}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			if c.API.BaseURL != "http://127.0.0.2/client/v4" {
				t.Errorf("base_url = %q", c.API.BaseURL)
			}
		}},
		{"metrics off", y("metrics_listen: ''", "api: {account_id: a}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			if c.MetricsListen != "" || c.MetricsEnabled() {
				t.Errorf("metrics_listen = %q, enabled %v", c.MetricsListen, c.MetricsEnabled())
			}
		}},
		{"metrics public", y("metrics_listen: '0.0.0.0:9464'", "api: {account_id: a}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			if c.MetricsListen != "0.0.0.0:9464" || !c.MetricsEnabled() {
				t.Errorf("metrics_listen = %q, enabled %v", c.MetricsListen, c.MetricsEnabled())
			}
		}},
		{"rate budget exactly 1200", y("api: {account_id: a, rate: 3, burst: 300}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			if c.API.Rate != 3 || c.API.Burst != 300 || c.API.Budget != 1200 {
				t.Errorf("rate %v burst %d budget %d, want 3, 300, 1200", c.API.Rate, c.API.Burst, c.API.Budget)
			}
		}},
		{"raised account budget", y("api: {account_id: a, rate: 100, burst: 100, budget: 30100}", "syncs: [{dir: /a, namespace_id: n}]"), func(t *testing.T, c Config) {
			if c.API.Rate != 100 || c.API.Burst != 100 || c.API.Budget != 30100 {
				t.Errorf("rate %v burst %d budget %d, want 100, 100, 30100", c.API.Rate, c.API.Burst, c.API.Budget)
			}
		}},
		{"same namespace disjoint prefixes", y("api: {account_id: a}", "syncs:", "  - {dir: /a, namespace_id: n, prefix: a/}", "  - {dir: /b, namespace_id: n, prefix: b/}"), func(t *testing.T, c Config) {
			checkSyncs(t, c, sync("a", "/a", "n", "a/"), sync("b", "/b", "n", "b/"))
		}},
		{"same prefix other namespaces", y("api: {account_id: a}", "syncs:", "  - {dir: /a, name: a, namespace_id: n1}", "  - {dir: /a, name: b, namespace_id: n2}"), func(t *testing.T, c Config) {
			checkSyncs(t, c, sync("a", "/a", "n1", ""), sync("b", "/a", "n2", ""))
		}},
		{"nulls keep defaults", y("log_level:", "api: {account_id: a, rate: ~}", "syncs: [{dir: /a, namespace_id: n, quiet: null}]"), func(t *testing.T, c Config) {
			if c.LogLevel != "info" || c.API.Rate != 1000.0/300 || c.Syncs[0].Quiet != time.Second {
				t.Errorf("log_level %q rate %v quiet %v, want info, 1000/300, 1s", c.LogLevel, c.API.Rate, c.Syncs[0].Quiet)
			}
		}},
		{"alias shared between syncs", y(
			"api: {account_id: a}",
			"syncs:",
			"  - dir: /a",
			"    namespace_id: n",
			"    prefix: a/",
			"    expiration: &rules",
			"      - {match: 'tmp/**', ttl: 7d}",
			"  - dir: /b",
			"    namespace_id: n",
			"    prefix: b/",
			"    expiration: *rules",
		), func(t *testing.T, c Config) {
			a, b := sync("a", "/a", "n", "a/"), sync("b", "/b", "n", "b/")
			rules := []ExpirationRule{{Match: "tmp/**", TTL: 7 * 24 * time.Hour}}
			a.Expiration, b.Expiration = rules, rules
			checkSyncs(t, c, a, b)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.data, "kvsync.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("second Validate: %v", err)
			}
			tc.check(t, c)
		})
	}
}

// checkSyncs compares the loaded syncs with want, field by field.
func checkSyncs(t *testing.T, c Config, want ...Sync) {
	t.Helper()
	if len(c.Syncs) != len(want) {
		t.Fatalf("%d syncs loaded, want %d: %+v", len(c.Syncs), len(want), c.Syncs)
	}
	for i := range want {
		if !reflect.DeepEqual(c.Syncs[i], want[i]) {
			t.Errorf("sync %d = %+v\nwant %+v", i, c.Syncs[i], want[i])
		}
	}
}

func TestNullKeepsDefaults(t *testing.T) {
	c, err := Parse(y("log_level:", "api: {account_id: a, rate: ~}", "syncs: [{dir: /a, namespace_id: n, quiet: null}]"), "k.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "info" || c.API.Rate != defaultRate || c.Syncs[0].Quiet != time.Second {
		t.Errorf("nulls replaced defaults: %q %v %v", c.LogLevel, c.API.Rate, c.Syncs[0].Quiet)
	}
}

func TestAllErrorsReported(t *testing.T) {
	_, err := Parse(y(
		"log_level: loud",
		"api: {account_id: a, concurrency: 0}",
		"syncs:",
		"  - {dir: /a, namespace_id: n, delete: nope}",
	), "k.yaml")
	var fields []string
	for _, fe := range fieldErrors(err) {
		fields = append(fields, fe.Field)
	}
	want := []string{"log_level", "api.concurrency", "syncs[0].delete"}
	if !reflect.DeepEqual(fields, want) {
		t.Errorf("fields = %v, want %v (all problems, in order)", fields, want)
	}
}

func TestValidateInCode(t *testing.T) {
	// A Config built in code has no sources: errors name the field only.
	c := Default()
	c.API.AccountID = "a"
	c.Syncs = []Sync{DefaultSync()}
	c.Syncs[0].Dir, c.Syncs[0].Name = "/a", "a"
	err := c.Validate()
	if err == nil || err.Error() != "syncs[0].namespace_id: required: the id of the KV namespace to write to" {
		t.Errorf("got %v", err)
	}
	c.Syncs[0].NamespaceID = "n"
	if err := c.Validate(); err != nil {
		t.Errorf("valid config rejected: %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"90s", 90 * time.Second, false},
		{"1h30m", 90 * time.Minute, false},
		{"7d", 7 * 24 * time.Hour, false},
		{"1d12h", 36 * time.Hour, false},
		{"1.5d", 36 * time.Hour, false},
		{"-2d", -48 * time.Hour, false},
		{"0", 0, false},
		{"1d-1h", 0, true},
		{"d", 0, true},
		{"3w", 0, true},
		{"1h2d", 0, true},
		{"99999999d", 0, true},
		{"", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseDuration(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("ParseDuration(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		err  bool
	}{
		{"1048576", 1 << 20, false},
		{"512KiB", 512 << 10, false},
		{"1MiB", 1 << 20, false},
		{"1 mib", 1 << 20, false},
		{"1.5MiB", 3 << 19, false},
		{"100MB", 100_000_000, false},
		{"2kB", 2000, false},
		{"1GiB", 1 << 30, false},
		{"7B", 7, false},
		{"-1MiB", 0, true},
		{"1MiBs", 0, true},
		{"MiB", 0, true},
		{"1.1B", 0, true},
		{"1e3", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("ParseSize(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestSlogLevelAndMetrics(t *testing.T) {
	for lvl, want := range map[string]string{"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR"} {
		c := Config{LogLevel: lvl}
		if got := c.SlogLevel().String(); got != want {
			t.Errorf("%s: %s", lvl, got)
		}
	}
	for listen, want := range map[string]bool{"": false, "off": false, "127.0.0.1:9464": true} {
		c := Config{MetricsListen: listen}
		if c.MetricsEnabled() != want {
			t.Errorf("MetricsEnabled(%q) = %v", listen, !want)
		}
	}
}

// TestSourceOf: SourceOf gives where a value was set, or for a defaulted one
// the enclosing block errors would name, and says which it is.
func TestSourceOf(t *testing.T) {
	c, err := parseFile([]byte("api:\n  account_id: a\nsyncs:\n  - dir: /srv/www\n    namespace_id: n\n"), "kvsync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field string
		want  Source
		set   bool
	}{
		{"syncs[0].dir", Source{File: "kvsync.yaml", Line: 4}, true},
		{"api.account_id", Source{File: "kvsync.yaml", Line: 2}, true},
		{"api.token_file", Source{File: "kvsync.yaml", Line: 1}, false}, // the api: block
		{"state_dir", Source{File: "kvsync.yaml", Line: 1}, false},
	} {
		t.Run(tc.field, func(t *testing.T) {
			got, set := c.SourceOf(tc.field)
			if got != tc.want || set != tc.set {
				t.Errorf("SourceOf(%q) = %v, %v; want %v, %v", tc.field, got, set, tc.want, tc.set)
			}
		})
	}
}

// TestBulkThresholdFollowsBulkMaxBytes: bulk_max_bytes under the default
// bulk_threshold lowers the default instead of failing on a field the user
// never set; a bulk_threshold set explicitly above it still fails.
func TestBulkThresholdFollowsBulkMaxBytes(t *testing.T) {
	dir := t.TempDir()
	write := func(extra string) string {
		p := filepath.Join(dir, "kvsync.yaml")
		y := "state_dir: " + dir + "/state\napi:\n  account_id: a\nsyncs:\n  - dir: " + dir + "\n    namespace_id: n\n" + extra
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := FromSources(Flags{Config: write("    bulk_max_bytes: 64KiB\n")}, nil)
	if err != nil {
		t.Fatalf("bulk_max_bytes: 64KiB alone: %v", err)
	}
	if got := c.Syncs[0].BulkThreshold; got != 64<<10 {
		t.Errorf("bulk_threshold = %d, want it lowered to bulk_max_bytes, %d", got, 64<<10)
	}
	_, err = FromSources(Flags{Config: write("    bulk_max_bytes: 64KiB\n    bulk_threshold: 128KiB\n")}, nil)
	if err == nil || !strings.Contains(err.Error(), "syncs[0].bulk_threshold") {
		t.Errorf("an explicit bulk_threshold over bulk_max_bytes: %v, want an error naming it", err)
	}
}
