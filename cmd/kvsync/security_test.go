package main

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
)

// secretToken is distinctive enough that any occurrence in an output is a
// leak, not a coincidence.
const secretToken = "kvsTOKEN-7f3a9c2e1b-do-not-print-4d5e6f"

// leaks returns where s contains the token, plain or in a common encoding.
func leaks(s string) []string {
	forms := map[string]string{
		"plain":                     secretToken,
		"base64":                    base64.StdEncoding.EncodeToString([]byte(secretToken)),
		"base64 of Bearer":          base64.StdEncoding.EncodeToString([]byte("Bearer " + secretToken)),
		"base64url":                 base64.RawURLEncoding.EncodeToString([]byte(secretToken)),
		"query escaped":             url.QueryEscape(secretToken),
		"the token's distinct core": "7f3a9c2e1b",
	}
	var found []string
	for name, f := range forms {
		if strings.Contains(s, f) {
			found = append(found, name)
		}
	}
	return found
}

// TestSecurityTokenNeverPrinted runs sync and the daemon at debug level, in
// text and JSON, against APIs that refuse the token (403), fail (500), send
// garbage, or work, with the token from the environment and from a file, and
// searches every byte of output and a metrics scrape for the token.
func TestSecurityTokenNeverPrinted(t *testing.T) {
	em, err := emulator.New(emulator.Options{Token: "a-different-token"})
	if err != nil {
		t.Fatal(err)
	}
	good, err := emulator.New(emulator.Options{Token: secretToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { good.Close() })
	servers := map[string]http.Handler{
		"403 from the emulator": em,
		"500 for everything": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(500)
			io.WriteString(w, `{"success":false,"errors":[{"code":10001,"message":"internal"}],"messages":[],"result":null}`)
		}),
		"garbage": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "<html>not json</html>")
		}),
		"working API": good,
	}
	for name, h := range servers {
		// Each format with each token source, over the servers.
		for _, fs := range [][2]string{{"text", "env"}, {"json", "token_file"}} {
			format, source := fs[0], fs[1]
			{
				t.Run(name+"/"+format+"/"+source, func(t *testing.T) {
					env := newKVEnvFrom(t, em)
					var requests atomic.Int64
					srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						requests.Add(1)
						h.ServeHTTP(w, r)
					}))
					t.Cleanup(srv.Close)
					mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
					mustWrite(t, filepath.Join(env.root, "b.txt.meta.json"), `{"x":1}`)
					mustWrite(t, filepath.Join(env.root, "b.txt"), "b")
					api := "max_retries: 1"
					o := cliOpts{env: []string{"CLOUDFLARE_API_TOKEN=" + secretToken}}
					if source == "token_file" {
						tf := filepath.Join(filepath.Dir(env.root), "token")
						if err := os.WriteFile(tf, []byte(secretToken+"\n"), 0o600); err != nil {
							t.Fatal(err)
						}
						api += "\ntoken_file: " + tf
						o.env = []string{"CLOUDFLARE_API_TOKEN="}
					}
					env.writeConfig(api, "")
					b, _ := os.ReadFile(env.config)
					cfg := strings.Replace(string(b), env.srv.URL, srv.URL, 1)
					cfg = "log_format: " + format + "\n" + cfg
					os.WriteFile(env.config, []byte(cfg), 0o600)

					var all strings.Builder
					for _, args := range [][]string{
						{"sync", "--config", env.config},
						{"check", "--config", env.config},
						{"plan", "--config", env.config},
						{"sync", "--config", env.config, "--log-level", "debug", "--api-base-url", srv.URL + "/client/v4/"},
					} {
						res := runCLI(t, o, args...)
						all.WriteString(res.stdout + res.stderr)
					}
					// The daemon: run until it has sent the API a request
					// with the token (or, against the working API, where the
					// syncs above left nothing to write, finished its initial
					// sync), scrape, stop. The clean stop finishes the work in
					// flight first, so every log line about those requests is
					// in its output: no sleep decides how much output is
					// searched.
					before := requests.Load()
					d := startDaemonEnv(t, env, o.env)
					deadline := time.Now().Add(converge)
					for requests.Load() == before && !d.ready() {
						if time.Now().After(deadline) {
							t.Fatalf("the daemon neither sent a request nor became ready within %s", converge)
						}
						time.Sleep(10 * time.Millisecond)
					}
					all.WriteString(d.scrape())
					d.stop()
					all.WriteString(d.logs.String())

					out := all.String()
					if !strings.Contains(out, "level") {
						t.Fatalf("test bug: no logs captured:\n%s", out)
					}
					if f := leaks(out); len(f) > 0 {
						i := strings.Index(out, "7f3a9c2e1b")
						t.Fatalf("the token appears in the output (%v), e.g. ...%s...", f, out[max(0, i-200):min(len(out), i+100)])
					}
				})
			}
		}
	}
}

// anyMetricsAddrRE finds the metrics address in text or JSON logs.
var anyMetricsAddrRE = regexp.MustCompile(`metrics serving"?[ ,]"?addr"?[=:]"?([0-9.:]+)`)

// startDaemonEnv is env.startDaemon with extra environment variables that
// come after the harness token, so they win.
func startDaemonEnv(t *testing.T, env *kvEnv, extra []string) *kvsyncProc {
	t.Helper()
	cmd := exec.Command(kvsyncBin, "run", "--config", env.config)
	cmd.Env = append(append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken), extra...)
	d := &kvsyncProc{t: t, cmd: cmd, logs: &testkit.Buffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = d.logs, d.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-d.exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := anyMetricsAddrRE.FindStringSubmatch(d.logs.String()); m != nil {
			d.metrics = "http://" + m[1]
			return d
		}
		select {
		case err := <-d.exited:
			t.Fatalf("kvsync run exited early: %v\n%s", err, d.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("kvsync run did not start serving metrics\n%s", d.logs.String())
	return nil
}

// TestSecurityTokenFilePermissions: a token file others can read draws a
// warning naming it; a 0600 one does not.
func TestSecurityTokenFilePermissions(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o600} {
		t.Run(mode.String(), func(t *testing.T) {
			env := newKVEnv(t, emulator.Faults{})
			mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
			tf := filepath.Join(filepath.Dir(env.root), "cf-token")
			if err := os.WriteFile(tf, []byte(testToken), mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(tf, mode)
			env.writeConfig("token_file: "+tf, "")
			res := runCLI(t, cliOpts{env: []string{"CLOUDFLARE_API_TOKEN="}}, "sync", "--config", env.config)
			if res.code != exitOK {
				t.Fatalf("sync with the token from %s: want exit 0\n%s", tf, res)
			}
			warned := regexp.MustCompile(`readable by group or others.*` + regexp.QuoteMeta(tf)).MatchString(res.stderr)
			if want := mode&0o044 != 0; warned != want {
				t.Fatalf("mode %v: warning naming %s present=%v, want %v\n%s", mode, tf, warned, want, res.stderr)
			}
		})
	}
}

// TestSecurityMetricsLoopbackByDefault: without metrics_listen the endpoints
// are bound to 127.0.0.1, never to every interface.
func TestSecurityMetricsLoopbackByDefault(t *testing.T) {
	def := config.Default().MetricsListen
	host, _, err := net.SplitHostPort(def)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		t.Fatalf("default metrics_listen %q is not a loopback address", def)
	}
	example, err := os.ReadFile("../../configs/kvsync.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^metrics_listen: 127\.0\.0\.1:\d+$`).Match(example) {
		t.Error("the example config's metrics_listen is not a loopback address")
	}

	ln, err := net.Listen("tcp", def)
	if err != nil {
		t.Skipf("the default metrics address %s is in use here, so a default run cannot bind it: %v", def, err)
	}
	ln.Close()
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a")
	env.writeConfig("", "")
	b, _ := os.ReadFile(env.config)
	os.WriteFile(env.config, bytes.Replace(b, []byte("metrics_listen: 127.0.0.1:0\n"), nil, 1), 0o600)
	d := env.startDaemon()
	d.waitReady(converge)
	d.stop()
	if m := metricsAddrRE.FindStringSubmatch(d.logs.String()); m == nil || m[1] != def {
		t.Fatalf("metrics served on %v, want %s", m, def)
	}
}

// TestSecurityTLS: certificates are verified; an extra CA comes only from
// api.ca_file, and nothing (field, flag, environment) turns verification off.
func TestSecurityTLS(t *testing.T) {
	em, err := emulator.New(emulator.Options{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := httptest.NewTLSServer(em)
	t.Cleanup(tlsSrv.Close)
	env := newKVEnvFrom(t, em)
	mustWrite(t, filepath.Join(env.root, "a.txt"), "over TLS")
	ca := filepath.Join(filepath.Dir(env.root), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	config := func(extra string) {
		env.writeConfig("max_retries: 0\n"+extra, "")
		b, _ := os.ReadFile(env.config)
		os.WriteFile(env.config, []byte(strings.Replace(string(b), env.srv.URL, tlsSrv.URL, 1)), 0o600)
	}

	t.Run("unknown CA is refused", func(t *testing.T) {
		config("")
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
		if res.code == exitOK || !strings.Contains(res.stderr, "certificate") {
			t.Fatalf("want a certificate error\n%s", res)
		}
		if n := len(em.Snapshot(testAccount, testNamespace)); n != 0 {
			t.Fatalf("%d keys written through an unverified connection", n)
		}
	})
	t.Run("ca_file is trusted", func(t *testing.T) {
		config("ca_file: " + ca)
		syncOK(t, env, cliOpts{})
	})
	t.Run("no way to disable verification", func(t *testing.T) {
		bad := regexp.MustCompile(`(?i)insecure|skip.?verif|no.?verif|verify.?(false|off)`)
		for _, cmd := range []string{"run", "sync", "plan", "check"} {
			res := runCLI(t, cliOpts{}, cmd, "-h")
			if bad.MatchString(res.stderr + res.stdout) {
				t.Errorf("kvsync %s -h offers a way to skip verification:\n%s", cmd, res.stderr)
			}
		}
		example, err := os.ReadFile("../../configs/kvsync.example.yaml")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(example), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "#") && bad.MatchString(l) {
				t.Errorf("example config line offers a way to skip verification: %s", l)
			}
		}
		// No production source sets InsecureSkipVerify or reads such a variable.
		filepath.Walk("../..", func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			src, _ := os.ReadFile(p)
			if bytes.Contains(src, []byte("InsecureSkipVerify")) || regexp.MustCompile(`Getenv\("[A-Z_]*(INSECURE|SKIP_VERIFY|NO_VERIFY)`).Match(src) {
				t.Errorf("%s can disable certificate verification", p)
			}
			return nil
		})
		// The field is unknown, hence an error, not silently ignored.
		config("insecure_skip_verify: true")
		if res := runCLI(t, cliOpts{}, "sync", "--config", env.config); res.code != exitUsage {
			t.Errorf("insecure_skip_verify in the config: want exit 2\n%s", res)
		}
		for _, v := range []string{"GODEBUG=x509ignoreCN=1", "KVSYNC_INSECURE=1", "CLOUDFLARE_INSECURE=1", "SSL_CERT_FILE=/dev/null"} {
			config("")
			// A fresh state store makes sync talk to the server.
			os.RemoveAll(env.stateDir)
			res := runCLI(t, cliOpts{env: []string{"CLOUDFLARE_API_TOKEN=" + testToken, v}}, "sync", "--config", env.config)
			if res.code == exitOK {
				t.Errorf("with %s an unverified server was accepted\n%s", v, res)
			}
		}
	})
}

// TestSecurityNothingOutsideTheRoot: links leading out of the root, written
// before or while the daemon runs, publish nothing from outside it.
func TestSecurityNothingOutsideTheRoot(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	outside := filepath.Join(filepath.Dir(env.root), "outside")
	mustWrite(t, filepath.Join(outside, "secret.txt"), "SECRET outside the root")
	mustWrite(t, filepath.Join(outside, "deep/more.txt"), "SECRET deeper")
	mustWrite(t, filepath.Join(env.root, "index.html"), "index")
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(env.root, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("../outside/secret.txt", "rel-escape.txt")
	link(filepath.Join(outside, "secret.txt"), "abs-escape.txt")
	link("../outside", "dir-escape")
	env.writeConfig("", "")
	d := env.startDaemon()
	d.waitReady(converge)
	// Links created while watching, and outside files changed behind them.
	link("../../"+filepath.Base(filepath.Dir(env.root))+"/outside/deep/more.txt", "later.txt")
	os.MkdirAll(filepath.Join(env.root, "sub"), 0o755)
	if err := os.Symlink("../../outside/deep", filepath.Join(env.root, "sub/later-dir")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(outside, "secret.txt"), "SECRET changed")
	mustWrite(t, filepath.Join(env.root, "marker.txt"), "after the links")
	env.waitConverged(t, map[string]kvEntry{"index.html": {Value: "index"}, "marker.txt": {Value: "after the links"}}, converge)
	// No sleep: marker.txt was written after the links, so their events were
	// read before its own (inotify keeps order) and reached the engine in
	// its batch or an earlier one; the clean stop then drains what is
	// queued or in flight. After it, the emulator holds all that was sent.
	d.stop()
	for k, e := range env.em.Snapshot(testAccount, testNamespace) {
		if bytes.Contains(e.Value, []byte("SECRET")) {
			t.Errorf("key %q holds a file from outside the root", k)
		}
	}
	env.waitConverged(t, map[string]kvEntry{"index.html": {Value: "index"}, "marker.txt": {Value: "after the links"}}, converge)
}
