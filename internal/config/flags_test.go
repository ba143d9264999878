package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; tests need it exact.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRegister(t *testing.T) {
	var f Flags
	fs := flag.NewFlagSet("kvsync", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	err := fs.Parse([]string{
		"--config", "c.yaml", "--dir", "d", "--account-id", "acc", "--namespace-id", "ns", "--prefix", "p/",
		"--api-base-url", "http://127.0.0.1:1/client/v4", "--state-dir", "s", "--metrics-listen", "off",
		"--concurrency", "7", "--log-level", "debug", "--log-format", "json",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Flags{Config: "c.yaml", Dir: "d", AccountID: "acc", NamespaceID: "ns", Prefix: "p/",
		APIBaseURL: "http://127.0.0.1:1/client/v4", StateDir: "s", MetricsListen: "off",
		Concurrency: 7, LogLevel: "debug", LogFormat: "json"}
	if f != want {
		t.Errorf("got %+v\nwant %+v", f, want)
	}
}

func TestFromSourcesSingleDirectory(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	c, err := FromSources(Flags{Dir: "site", NamespaceID: "ns", Prefix: "p/", AccountID: "acc"}, envOf(map[string]string{"STATE_DIRECTORY": "/sd"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Syncs) != 1 {
		t.Fatalf("syncs: %+v", c.Syncs)
	}
	s := c.Syncs[0]
	if s.Dir != filepath.Join(dir, "site") || s.NamespaceID != "ns" || s.Prefix != "p/" || s.Name != "site" {
		t.Errorf("sync = %+v", s)
	}
	if c.StateDir != "/sd" {
		t.Errorf("state dir = %q, want $STATE_DIRECTORY", c.StateDir)
	}
	s.Dir, s.NamespaceID, s.Prefix, s.Name = "", "", "", ""
	if !reflect.DeepEqual(s, DefaultSync()) {
		t.Errorf("flag-built sync lacks defaults: %+v", s)
	}
}

func TestFromSourcesFlagErrors(t *testing.T) {
	dir := t.TempDir()
	two := writeFile(t, filepath.Join(dir, "two.yaml"), y(
		"api: {account_id: a}",
		"syncs:",
		"  - {dir: /a, namespace_id: n, prefix: a/}",
		"  - {dir: /b, namespace_id: n, prefix: b/}",
	), 0o644)
	cases := []struct {
		name string
		f    Flags
		env  map[string]string
		want string
		kind error
	}{
		{"nothing", Flags{}, nil, "--config or --dir with --namespace-id is required", ErrRequired},
		{"dir without namespace", Flags{Dir: "/a", AccountID: "a"}, nil, "--namespace-id is required with --dir", ErrRequired},
		{"namespace without dir", Flags{NamespaceID: "n"}, nil, "--dir is required with --namespace-id", ErrRequired},
		{"prefix without dir", Flags{Prefix: "p"}, nil, "--dir is required with --prefix", ErrRequired},
		{"no account", Flags{Dir: "/a", NamespaceID: "n"}, nil, "api.account_id: required: set api.account_id, --account-id or $CLOUDFLARE_ACCOUNT_ID", ErrRequired},
		{"dir over two syncs", Flags{Config: two, Dir: "/c"}, nil, "--dir overrides the sync of a config file with exactly one sync, but " + two + " has 2", ErrConflict},
		{"prefix over two syncs", Flags{Config: two, Prefix: "c/"}, nil, "--prefix overrides", ErrConflict},
		{"bad concurrency flag", Flags{Dir: "/a", NamespaceID: "n", AccountID: "a", Concurrency: 100}, nil, "--concurrency: api.concurrency: 100 is outside 1..64", ErrInvalid},
		{"bad namespace flag", Flags{Dir: "/a", NamespaceID: "a/b", AccountID: "a"}, nil, "--namespace-id: syncs[0].namespace_id: \"a/b\" has characters", ErrInvalid},
		{"bad base url flag", Flags{Dir: "/a", NamespaceID: "n", AccountID: "a", APIBaseURL: "http://example.com"}, nil, "--api-base-url: api.base_url: \"http://example.com\": http:// would send the API token in clear text", ErrInvalid},
		{"bad base url env", Flags{Dir: "/a", NamespaceID: "n", AccountID: "a"}, map[string]string{EnvAPIBaseURL: "api.cloudflare.com"}, "$CLOUDFLARE_API_BASE_URL: api.base_url: \"api.cloudflare.com\" is not an http(s) URL", ErrInvalid},
		{"bad log level flag", Flags{Dir: "/a", NamespaceID: "n", AccountID: "a", LogLevel: "loud"}, nil, "--log-level: log_level: \"loud\" is not one of", ErrInvalid},
		{"state dir tilde flag", Flags{Dir: "/a", NamespaceID: "n", AccountID: "a", StateDir: "~/s"}, nil, "--state-dir: state_dir:", ErrInvalid},
		{"missing file", Flags{Config: filepath.Join(dir, "nope.yaml")}, nil, "nope.yaml", os.ErrNotExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromSources(tc.f, envOf(tc.env))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %q is not %v", err, tc.kind)
			}
		})
	}
}

// TestFromSourcesPrecedence: flags > environment > file > defaults, field by
// field.
func TestFromSourcesPrecedence(t *testing.T) {
	dir := t.TempDir()
	full := writeFile(t, filepath.Join(dir, "full.yaml"), y(
		"log_level: warn",
		"log_format: json",
		"state_dir: /file/state",
		"metrics_listen: 127.0.0.1:1111",
		"api:",
		"  account_id: fileacct",
		"  base_url: https://file.example/client/v4",
		"  concurrency: 8",
		"syncs:",
		"  - dir: /file/dir",
		"    namespace_id: filens",
		"    prefix: file/",
	), 0o644)
	empty := writeFile(t, filepath.Join(dir, "empty.yaml"), y(
		"syncs:",
		"  - dir: /file/dir",
		"    namespace_id: filens",
	), 0o644)
	env := map[string]string{EnvAccountID: "envacct", EnvAPIBaseURL: "https://env.example/client/v4", "STATE_DIRECTORY": "/env/state"}
	flags := Flags{AccountID: "flagacct", APIBaseURL: "https://flag.example/client/v4", StateDir: "/flag/state",
		MetricsListen: "off", Concurrency: 2, LogLevel: "debug", LogFormat: "text", Dir: "/flag/dir", NamespaceID: "flagns", Prefix: "flag/"}

	type view struct {
		Account, BaseURL, StateDir, Metrics, Level, Format, Dir, NS, Prefix string
		Concurrency                                                         int
	}
	get := func(c Config) view {
		return view{c.API.AccountID, c.API.BaseURL, c.StateDir, c.MetricsListen, c.LogLevel, c.LogFormat,
			c.Syncs[0].Dir, c.Syncs[0].NamespaceID, c.Syncs[0].Prefix, c.API.Concurrency}
	}
	cases := []struct {
		name  string
		file  string
		env   map[string]string
		flags Flags
		want  view
	}{
		{"file over defaults", full, nil, Flags{},
			view{"fileacct", "https://file.example/client/v4", "/file/state", "127.0.0.1:1111", "warn", "json", "/file/dir", "filens", "file/", 8}},
		{"env over file", full, env, Flags{},
			view{"envacct", "https://env.example/client/v4", "/file/state", "127.0.0.1:1111", "warn", "json", "/file/dir", "filens", "file/", 8}},
		{"flags over env and file", full, env, flags,
			view{"flagacct", "https://flag.example/client/v4", "/flag/state", "off", "debug", "text", "/flag/dir", "flagns", "flag/", 2}},
		{"env over defaults", empty, env, Flags{},
			view{"envacct", "https://env.example/client/v4", "/env/state", "127.0.0.1:9464", "info", "text", "/file/dir", "filens", "", 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.flags
			f.Config = tc.file
			c, err := FromSources(f, envOf(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if got := get(c); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestFromSourcesFlagOverridesKeepFileLines(t *testing.T) {
	// A value from the file is still reported at its line when a flag
	// changed something else.
	path := writeFile(t, filepath.Join(t.TempDir(), "k.yaml"), y(
		"api: {account_id: a}",
		"syncs:",
		"  - dir: /a",
		"    namespace_id: n",
		"    delete: purge",
	), 0o644)
	_, err := FromSources(Flags{Config: path, Dir: "/b"}, nil)
	if err == nil || err.Error() != path+":5: syncs[0].delete: \"purge\" is not one of delete, keep, expire" {
		t.Errorf("got %v", err)
	}
}
