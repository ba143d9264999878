package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/config"
)

// TestOwnFilesNeverPublished: a config under which a sync would publish the
// state directory, a token or CA file, or the config file itself does not
// load (an ErrInsideTree naming the field, both paths and the sync's dir),
// unless the sync's own rules keep that path out. It goes through
// loadConfig, the one door of check, run, sync, plan, a reload and --local.
func TestOwnFilesNeverPublished(t *testing.T) {
	type setup struct {
		yaml  string // the config file's body; "" for flags only
		flags config.Flags
		local bool
		env   map[string]string
	}
	cases := []struct {
		name string
		// make builds the situation under base, where root is the synced
		// tree and the config file is base/kvsync.yaml unless moved.
		make func(t *testing.T, base, root string) setup
		// want lists what the error must name; nil means the config loads.
		want []string
	}{
		{"state outside the tree", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", "")}
		}, nil},
		{"state inside, not yet created", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root+"/state", "")}
		}, []string{"kvsync.yaml:1: state_dir: " + "ROOT/state", "syncs[0].dir ROOT (BASE/kvsync.yaml:8)", `exclude: ["state"]`}},
		{"state is the tree itself", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root, "")}
		}, []string{"state_dir: ROOT is inside syncs[0].dir ROOT"}},
		{"state excluded by an exclude glob", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root+"/var/state", `exclude: ["var/**"]`)}
		}, nil},
		{"state's files excluded, the directory still entered", func(t *testing.T, base, root string) setup {
			// What kvsync writes there has no fixed names; only a directory
			// the scan never enters is sure to publish none of them.
			return setup{yaml: syncYAML(root, root+"/state", `exclude: ["state/*"]`)}
		}, []string{"state_dir: ROOT/state"}},
		{"state under include globs, the directory still entered", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root+"/state", `include: ["**/*.html"]`)}
		}, []string{"state_dir: ROOT/state"}},
		{"state excluded by the hidden-path default", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root+"/.kvsync/state", "")}
		}, nil},
		{"hidden state published with include_hidden", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root+"/.kvsync/state", "include_hidden: true")}
		}, []string{"state_dir: ROOT/.kvsync/state"}},
		{"state under .well-known, which is not hidden", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, root+"/.well-known/kvsync", "")}
		}, []string{"state_dir: ROOT/.well-known/kvsync"}},
		{"default state directory inside the tree", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, "", ""), env: map[string]string{"STATE_DIRECTORY": root + "/kvsync-state"}}
		}, []string{"state_dir (the default): ROOT/kvsync-state"}},
		{"state reached through a symlinked path", func(t *testing.T, base, root string) setup {
			mkdir(t, root+"/data")
			symlink(t, root+"/data", base+"/var-lib")
			return setup{yaml: syncYAML(root, base+"/var-lib/kvsync", "")}
		}, []string{"state_dir: BASE/var-lib/kvsync (ROOT/data/kvsync once symlinks are resolved)"}},
		{"tree reached through a symlinked dir", func(t *testing.T, base, root string) setup {
			symlink(t, root, base+"/www")
			return setup{yaml: syncYAML(base+"/www", root+"/state", "")}
		}, []string{"state_dir: ROOT/state is inside syncs[0].dir BASE/www"}},
		{"token file inside", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", "", "token_file: "+root+"/cf-token")}
		}, []string{"kvsync.yaml:5: api.token_file: ROOT/cf-token", `as key "site/cf-token"`, `exclude: ["cf-token"]`}},
		{"token file excluded by an exclude glob", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", `exclude: ["secrets/**"]`, "token_file: "+root+"/secrets/cf-token")}
		}, nil},
		{"token file outside the include globs", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", `include: ["**/*.html"]`, "token_file: "+root+"/cf-token")}
		}, nil},
		{"token file skipped as editor debris", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", "", "token_file: "+root+"/cf-token.tmp")}
		}, nil},
		{"token file as a sidecar of a published file", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", "", "token_file: "+root+"/index.html.meta.json")}
		}, []string{"api.token_file: ROOT/index.html.meta.json"}},
		{"token file through a symlinked path", func(t *testing.T, base, root string) setup {
			symlink(t, root, base+"/alias")
			return setup{yaml: syncYAML(root, base+"/state", "", "token_file: "+base+"/alias/cf-token")}
		}, []string{"api.token_file: BASE/alias/cf-token (ROOT/cf-token once symlinks are resolved)"}},
		{"token file reached through a link inside the tree", func(t *testing.T, base, root string) setup {
			// Resolved, it is hidden; under the link's name a scan publishes it.
			mkdir(t, root+"/.secret")
			symlink(t, root+"/.secret", root+"/public")
			return setup{yaml: syncYAML(root, base+"/state", "", "token_file: "+root+"/public/cf-token")}
		}, []string{"api.token_file: ROOT/public/cf-token (ROOT/.secret/cf-token once symlinks are resolved)", `as key "site/public/cf-token"`}},
		{"state inside the second sync", func(t *testing.T, base, root string) setup {
			mkdir(t, base+"/other")
			return setup{yaml: "state_dir: " + root + "/state\napi:\n  account_id: acct\nsyncs:\n" +
				"  - dir: " + base + "/other\n    namespace_id: ns1\n" +
				"  - dir: " + root + "\n    namespace_id: ns2\n"}
		}, []string{"state_dir: ROOT/state is inside syncs[1].dir ROOT (BASE/kvsync.yaml:7)", `syncs[1].exclude: ["state"]`}},
		{"systemd credential inside", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", ""), env: map[string]string{"CREDENTIALS_DIRECTORY": root + "/creds"}}
		}, []string{"$CREDENTIALS_DIRECTORY/cloudflare-api-token: ROOT/creds/cloudflare-api-token is inside"}},
		{"systemd credential not read: the environment's token wins", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", ""), env: map[string]string{"CREDENTIALS_DIRECTORY": root + "/creds", "CLOUDFLARE_API_TOKEN": "t"}}
		}, nil},
		{"ca file inside", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(root, base+"/state", "", "ca_file: "+root+"/ca.pem")}
		}, []string{"api.ca_file: ROOT/ca.pem"}},
		{"config file itself inside", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(base, base+"/.state", "")}
		}, []string{"kvsync.yaml:8: syncs[0].dir: BASE holds the config file BASE/kvsync.yaml", `exclude: ["kvsync.yaml"]`}},
		{"config file itself inside, excluded", func(t *testing.T, base, root string) setup {
			return setup{yaml: syncYAML(base, base+"/.state", `exclude: ["*.yaml"]`)}
		}, nil},
		{"flags only", func(t *testing.T, base, root string) setup {
			return setup{flags: config.Flags{Dir: root, StateDir: root + "/state", NamespaceID: "ns", AccountID: "acct"}}
		}, []string{"--state-dir: state_dir: ROOT/state is inside syncs[0].dir ROOT (--dir)"}},
		{"flags only, relative paths", func(t *testing.T, base, root string) setup {
			t.Chdir(root)
			return setup{flags: config.Flags{Dir: ".", StateDir: "./state", NamespaceID: "ns", AccountID: "acct"}}
		}, []string{"--state-dir: state_dir: ROOT/state"}},
		{"--local", func(t *testing.T, base, root string) setup {
			return setup{flags: config.Flags{Dir: root, StateDir: root + "/state"}, local: true}
		}, []string{"--state-dir: state_dir: ROOT/state"}},
		{"--local with a state directory outside", func(t *testing.T, base, root string) setup {
			return setup{flags: config.Flags{Dir: root, StateDir: base + "/state"}, local: true}
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{"CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_BASE_URL", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"} {
				t.Setenv(v, "")
			}
			base := t.TempDir()
			root := filepath.Join(base, "root")
			mkdir(t, root)
			st := tc.make(t, base, root)
			for k, v := range st.env {
				t.Setenv(k, v)
			}
			cf := commonFlags{cfg: st.flags, local: st.local}
			if st.yaml != "" {
				cf.cfg.Config = filepath.Join(base, "kvsync.yaml")
				if err := os.WriteFile(cf.cfg.Config, []byte(st.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := loadConfig(&cf)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("the config does not load: %v", err)
				}
				return
			}
			if !errors.Is(err, config.ErrInsideTree) || !errors.As(err, new(usageError)) {
				t.Fatalf("err = %v; want a usage error wrapping config.ErrInsideTree", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				w = strings.NewReplacer("BASE", base, "ROOT", root).Replace(w)
				if !strings.Contains(msg, w) {
					t.Errorf("the error lacks %q:\n%s", w, msg)
				}
			}
		})
	}
}

// syncYAML is a config with one sync of dir (prefix "site/") and the state
// in stateDir (unset when ""); syncExtra goes into the sync, apiExtra into
// api (whose first line is line 4, so a token_file there is line 5).
func syncYAML(dir, stateDir, syncExtra string, apiExtra ...string) string {
	var b strings.Builder
	if stateDir != "" {
		b.WriteString("state_dir: " + stateDir + "\n")
	} else {
		b.WriteString("log_level: info\n")
	}
	b.WriteString("metrics_listen: off\napi:\n  account_id: acct\n")
	for _, l := range apiExtra {
		b.WriteString("  " + l + "\n")
	}
	for len(apiExtra) < 2 {
		b.WriteString("  # -\n")
		apiExtra = append(apiExtra, "")
	}
	b.WriteString("syncs:\n  - dir: " + dir + "\n    namespace_id: ns\n    prefix: site/\n")
	if syncExtra != "" {
		b.WriteString("    " + syncExtra + "\n")
	}
	return b.String()
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
