// Package deploy_test keeps the deployment files consistent with each other
// and with the daemon: the example configs are configs kvsync accepts, the
// systemd unit and the container image agree with the config they ship
// beside, and the version the build stamps exists to be stamped.
package deploy_test

import (
	"bufio"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/config"
)

const (
	configPath   = "/etc/kvsync/kvsync.yaml"
	nonroot      = "65532:65532"
	drainTimeout = 30 * time.Second // kvsync run's default --drain-timeout
)

func parseConfig(t *testing.T, file string) config.Config {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// Parsed under the path it is installed at, as the daemon would read it.
	c, err := config.Parse(data, configPath)
	if err != nil {
		t.Fatalf("kvsync rejects %s: %v", file, err)
	}
	return c
}

// unitFile is a systemd unit: section -> key -> values, in order.
type unitFile map[string]map[string][]string

func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: %q is not key=value inside a section", n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

func (u unitFile) last(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// checkUnit returns how the unit breaks the contract with kvsync and cfg.
func checkUnit(u unitFile, cfg config.Config) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("kvsync.service: "+format, args...)) }
	want := map[string]string{
		"Type":            "notify", // READY=1 after the initial sync
		"StateDirectory":  "kvsync",
		"DynamicUser":     "yes",
		"ExecReload":      "/bin/kill -HUP $MAINPID",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
	}
	for k, v := range want {
		if got := u.last("Service", k); got != v {
			fail("%s=%q, want %q", k, got, v)
		}
	}
	exec := strings.Fields(u.last("Service", "ExecStart"))
	if len(exec) < 2 || exec[1] != "run" {
		fail("ExecStart=%q does not run the daemon (kvsync run)", strings.Join(exec, " "))
	}
	if i := slices.Index(exec, "--config"); i < 0 || i+1 >= len(exec) || exec[i+1] != configPath {
		fail("ExecStart does not pass --config %s", configPath)
	}
	cred := u.last("Service", "LoadCredential")
	if name, _, _ := strings.Cut(cred, ":"); name != config.CredentialName {
		fail("LoadCredential=%q: kvsync reads the credential named %q", cred, config.CredentialName)
	}
	if wd, err := time.ParseDuration(u.last("Service", "WatchdogSec")); err != nil || wd <= 0 {
		fail("WatchdogSec=%q: want a positive duration", u.last("Service", "WatchdogSec"))
	}
	if stop, err := time.ParseDuration(u.last("Service", "TimeoutStopSec")); err != nil || stop <= drainTimeout {
		fail("TimeoutStopSec=%q: must exceed kvsync's %s drain timeout", u.last("Service", "TimeoutStopSec"), drainTimeout)
	}
	families := strings.Fields(strings.Join(u["Service"]["RestrictAddressFamilies"], " "))
	if !slices.Contains(families, "AF_UNIX") {
		fail("RestrictAddressFamilies lacks AF_UNIX, which $NOTIFY_SOCKET needs")
	}
	if cfg.StateDir != "" && !strings.HasPrefix(cfg.StateDir, "/var/lib/kvsync") {
		fail("the config's state_dir %s is not the unit's StateDirectory", cfg.StateDir)
	}
	readOnly := strings.Fields(strings.Join(u["Service"]["ReadOnlyPaths"], " "))
	for _, s := range cfg.Syncs {
		covered := slices.ContainsFunc(readOnly, func(p string) bool {
			rel, err := filepath.Rel(strings.TrimLeft(p, "-"), s.Dir)
			return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
		})
		if !covered {
			fail("sync %q: dir %s is not under any ReadOnlyPaths= %v", s.Name, s.Dir, readOnly)
		}
	}
	return errs
}

func TestSystemdExample(t *testing.T) {
	raw, err := os.ReadFile("systemd/kvsync.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Left unset so that $STATE_DIRECTORY (StateDirectory=) decides.
	if strings.Contains(string(raw), "\nstate_dir:") {
		t.Error("systemd/kvsync.yaml sets state_dir; leave it to $STATE_DIRECTORY")
	}
	cfg := parseConfig(t, "systemd/kvsync.yaml")
	text, err := os.ReadFile("systemd/kvsync.service")
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(string(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range checkUnit(u, cfg) {
		t.Error(e)
	}
}

func TestCheckUnitCatchesBreakage(t *testing.T) {
	cfg := parseConfig(t, "systemd/kvsync.yaml")
	text, err := os.ReadFile("systemd/kvsync.service")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, old, new, want string }{
		{"simple type", "Type=notify", "Type=simple", `Type="simple"`},
		{"wrong credential", "LoadCredential=cloudflare-api-token:", "LoadCredential=token:", `credential named "cloudflare-api-token"`},
		{"stop timeout shorter than drain", "TimeoutStopSec=90s", "TimeoutStopSec=10s", "drain timeout"},
		{"no notify socket", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "RestrictAddressFamilies=AF_INET AF_INET6", "AF_UNIX"},
		{"synced dir not read-only", "ReadOnlyPaths=/srv/www", "ReadOnlyPaths=/srv/other", `dir /srv/www is not under`},
		{"other config", "--config /etc/kvsync/kvsync.yaml", "--config /etc/kvsync.yaml", "--config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := strings.Count(string(text), tt.old); n != 1 {
				t.Fatalf("kvsync.service contains %q %d times, want once: update the case", tt.old, n)
			}
			u, err := parseUnit(strings.Replace(string(text), tt.old, tt.new, 1))
			if err != nil {
				t.Fatal(err)
			}
			got := errors.Join(checkUnit(u, cfg)...)
			if got == nil || !strings.Contains(got.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", got, tt.want)
			}
		})
	}
}

// dockerfile is a Dockerfile's instructions: args holds the ARGs declared
// before the first FROM with their defaults, stage the final stage's
// instructions (instruction -> arguments).
type dockerfile struct {
	args  map[string]string
	stage map[string][]string
}

func parseDockerfile(text string) dockerfile {
	d := dockerfile{args: map[string]string{}}
	// Join continuation lines first.
	text = strings.ReplaceAll(text, "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, args, _ := strings.Cut(line, " ")
		instr = strings.ToUpper(instr)
		args = strings.TrimSpace(args)
		if instr == "ARG" && d.stage == nil {
			name, def, _ := strings.Cut(args, "=")
			d.args[name] = def
		}
		if instr == "FROM" {
			d.stage = map[string][]string{}
		}
		if d.stage != nil {
			d.stage[instr] = append(d.stage[instr], args)
		}
	}
	return d
}

// from is the final stage's base image as built by default: a ${NAME} or
// $NAME reference resolved to the ARG's default, "" when it has none.
func (d dockerfile) from() string {
	from := d.stage["FROM"]
	if len(from) != 1 {
		return ""
	}
	ref, _, _ := strings.Cut(from[0], " ")
	return os.Expand(ref, func(name string) string { return d.args[name] })
}

// checkDockerfile returns how the Dockerfile breaks the contract with the
// container config cfg and with `make build`, which writes the binary it
// copies.
func checkDockerfile(text string, cfg config.Config) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("Dockerfile: "+format, args...)) }
	d := parseDockerfile(text)
	st := d.stage
	if from := d.from(); !strings.HasPrefix(from, "gcr.io/distroless/static") || !strings.Contains(from, ":nonroot@") {
		fail("final stage FROM %v (by default %q): want distroless static, nonroot, by digest", st["FROM"], from)
	}
	if got := st["USER"]; !slices.Equal(got, []string{nonroot}) {
		fail("USER %v, want %s", got, nonroot)
	}
	if !slices.Contains(st["COPY"], "bin/kvsync /kvsync") {
		fail("COPY %v does not copy bin/kvsync (what make build writes) to /kvsync", st["COPY"])
	}
	if !slices.ContainsFunc(st["COPY"], func(c string) bool {
		return strings.HasPrefix(c, "--chown="+nonroot+" ") && strings.HasSuffix(c, " "+cfg.StateDir+"/")
	}) {
		fail("no COPY --chown=%s makes %s: a fresh volume there would be root's", nonroot, cfg.StateDir)
	}
	if !slices.Contains(st["VOLUME"], `["`+cfg.StateDir+`"]`) {
		fail("state_dir %s is not a VOLUME (%v): a read-only root leaves nowhere else to write", cfg.StateDir, st["VOLUME"])
	}
	// Flags alone (no config) must find the volume too: $STATE_DIRECTORY is
	// the default kvsync reads first, whatever the uid.
	if !slices.Contains(st["ENV"], "STATE_DIRECTORY="+cfg.StateDir) {
		fail("ENV %v does not set STATE_DIRECTORY=%s: without a config the state would go under $HOME, on the read-only root", st["ENV"], cfg.StateDir)
	}
	if got := config.DefaultStateDir(func(k string) string {
		if k == "STATE_DIRECTORY" {
			return cfg.StateDir
		}
		return "/home/nonroot"
	}, 65532); got != cfg.StateDir {
		fail("with STATE_DIRECTORY=%s kvsync as 65532 defaults to %s", cfg.StateDir, got)
	}
	host, port, err := net.SplitHostPort(cfg.MetricsListen)
	if err != nil || host != "0.0.0.0" {
		fail("metrics_listen %q: inside a container it must listen on 0.0.0.0 to be reachable", cfg.MetricsListen)
	}
	if !slices.Contains(st["EXPOSE"], port) {
		fail("EXPOSE %v does not include the metrics port %s", st["EXPOSE"], port)
	}
	if cmd := st["CMD"]; len(cmd) != 1 || !strings.Contains(cmd[0], `"`+configPath+`"`) {
		fail("CMD %v does not read %s", cmd, configPath)
	}
	if !slices.ContainsFunc(st["LABEL"], func(l string) bool { return strings.Contains(l, `org.opencontainers.image.version="${VERSION}"`) }) {
		fail("no org.opencontainers.image.version label from ${VERSION}")
	}
	return errs
}

func TestContainerExample(t *testing.T) {
	cfg := parseConfig(t, "container/kvsync.yaml")
	text, err := os.ReadFile("container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range checkDockerfile(string(text), cfg) {
		t.Error(e)
	}
	// The image is only as static and as stamped as `make build` makes it,
	// and `make image` labels it with the version it stamps.
	mk, err := os.ReadFile(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	makefile := string(mk)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^LDFLAGS\s*:?=.*-X main\.version=\$\(VERSION\)`),
		regexp.MustCompile(`(?m)^build:.*\n(?:\t.*\n)*?\tCGO_ENABLED=0 .*-trimpath.*-o bin/kvsync \./cmd/kvsync`),
		regexp.MustCompile(`(?m)^image: build\n(?:\t.*\n)*\t.*-f deploy/container/Dockerfile --build-arg VERSION=\$\(VERSION\)`),
		regexp.MustCompile(`(?m)^image: build\n(?:\t.*\n)*\t.*--build-arg BASE=\$\(BASE\)`),
	} {
		if !want.MatchString(makefile) {
			t.Errorf("Makefile does not match %s", want)
		}
	}
}

func TestCheckDockerfileCatchesBreakage(t *testing.T) {
	cfg := parseConfig(t, "container/kvsync.yaml")
	b, err := os.ReadFile("container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	tests := []struct{ name, old, new, want string }{
		{"no state directory default", "ENV STATE_DIRECTORY=/var/lib/kvsync", "ENV XDG_STATE_HOME=/var/lib", "STATE_DIRECTORY"},
		{"root user", "USER 65532:65532", "USER 0:0", "USER"},
		{"unpinned base", ":nonroot@sha256:", ":nonroot-", "distroless"},
		{"binary from elsewhere", "COPY bin/kvsync /kvsync", "COPY kvsync /kvsync", "bin/kvsync"},
		{"state directory root's", "COPY --chown=65532:65532 deploy", "COPY deploy", "--chown"},
		{"no volume", `VOLUME ["/var/lib/kvsync"]`, `VOLUME ["/state"]`, "VOLUME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := strings.Count(text, tt.old); n != 1 {
				t.Fatalf("Dockerfile contains %q %d times, want once: update the case", tt.old, n)
			}
			got := errors.Join(checkDockerfile(strings.Replace(text, tt.old, tt.new, 1), cfg)...)
			if got == nil || !strings.Contains(got.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", got, tt.want)
			}
		})
	}
}

// TestVersionIsStampable: -X silently does nothing when the variable is
// missing, renamed, or initialised by a function call, so check that
// cmd/kvsync declares `var version = "..."` (a string constant) in package main.
func TestVersionIsStampable(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "cmd", "kvsync", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var parsed []*ast.File
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if f.Name.Name != "main" {
			t.Fatalf("%s is package %s, not main", name, f.Name.Name)
		}
		parsed = append(parsed, f)
	}
	if len(parsed) == 0 {
		t.Fatal("no Go files in cmd/kvsync")
	}
	found := false
	for _, f := range parsed {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if n.Name != "version" {
						continue
					}
					found = true
					if i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); !ok || lit.Kind != token.STRING {
						t.Errorf("var version is initialised with %T, not a string literal: -X cannot set it", vs.Values[i])
					} else if _, err := strconv.Unquote(lit.Value); err != nil {
						t.Error(err)
					}
				}
			}
		}
	}
	if !found {
		t.Error("cmd/kvsync has no package-level var version for -X main.version")
	}
}
