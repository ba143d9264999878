package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
)

// syncOK runs one sync that must succeed and converge on the tree.
func syncOK(t *testing.T, env *kvEnv, o cliOpts) {
	t.Helper()
	res := runCLI(t, o, "sync", "--config", env.config)
	if res.code != exitOK {
		t.Fatalf("sync: want exit 0\n%s", res)
	}
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
}

// TestHostileSidecars: a broken sidecar holds its file back (exit 1, the
// sidecar named) and KV keeps the last good value and metadata, while the
// rest of the tree is still published.
func TestHostileSidecars(t *testing.T) {
	cases := []struct {
		name  string
		write func(t *testing.T, path string)
		want  string // in stderr besides the sidecar's name
	}{
		{"invalid JSON", func(t *testing.T, p string) { mustWrite(t, p, `{"content-type": "text/html",`) }, "not valid JSON"},
		{"an array", func(t *testing.T, p string) { mustWrite(t, p, `["a", "b"]`) }, "not a JSON object"},
		{"a string", func(t *testing.T, p string) { mustWrite(t, p, `"text/html"`) }, "not a JSON object"},
		{"null", func(t *testing.T, p string) { mustWrite(t, p, `null`) }, "not a JSON object"},
		{"empty", func(t *testing.T, p string) { mustWrite(t, p, "") }, "invalid metadata sidecar"},
		{"over 1024 bytes compacted", func(t *testing.T, p string) {
			mustWrite(t, p, `{"x": "`+strings.Repeat("y", 1020)+`"}`)
		}, "over the KV limit of 1024"},
		{"1 MiB", func(t *testing.T, p string) {
			mustWrite(t, p, `{"x": "`+strings.Repeat("y", 1<<20)+`"}`)
		}, "far over"},
		{"not UTF-8", func(t *testing.T, p string) { mustWrite(t, p, "{\"x\": \"\xff\xfe\"}") }, "not valid UTF-8"},
		{"a directory", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newKVEnv(t, emulator.Faults{})
			page := filepath.Join(env.root, "page.html")
			sidecar := page + ".meta.json"
			mustWrite(t, page, "<h1>good</h1>")
			mustWrite(t, sidecar, `{"content-type": "text/html"}`)
			env.writeConfig("", "")
			syncOK(t, env, cliOpts{})
			good := expectTree(t, env.root, nil)

			mustWrite(t, page, "<h1>changed while its sidecar is broken</h1>")
			tc.write(t, sidecar)
			mustWrite(t, filepath.Join(env.root, "other.txt"), "still published")
			res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
			if res.code != exitSyncFailed {
				t.Fatalf("sync: want exit %d\n%s", exitSyncFailed, res)
			}
			for _, w := range []string{sidecar, tc.want, "held back"} {
				if !strings.Contains(res.stderr+res.stdout, w) {
					t.Errorf("sync output does not say %q:\n%s", w, res)
				}
			}
			good["other.txt"] = kvEntry{Value: "still published"}
			env.waitConverged(t, good, converge)

			res = runCLI(t, cliOpts{}, "check", "--config", env.config)
			if res.code != exitSyncFailed || !strings.Contains(res.stdout, sidecar) {
				t.Fatalf("check: want exit %d naming %s\n%s", exitSyncFailed, sidecar, res)
			}
		})
	}
}

// longPath is a relative path of exactly n bytes, in directories, since a
// single name may have at most 255 bytes.
func longPath(n int) string {
	var b strings.Builder
	for seg := 0; n-b.Len() > 201; seg++ {
		b.WriteString(strings.Repeat(string(rune('a'+seg)), 200) + "/")
	}
	b.WriteString(strings.Repeat("z", n-b.Len()))
	return b.String()
}

// TestHostileNames: names that are hard for URLs and shells (dots, spaces,
// %, ?, #, newlines, backslashes, non-ASCII) are keys verbatim, and a second
// sync finds every one unchanged (the key round-trips exactly).
func TestHostileNames(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	names := []string{
		"..a", "a..", "...", "a.b..c", "dir.../x", "..dir/y",
		"with space", " leading", "trailing ", "100%", "%41", "%2F", "%%", "a%2Fb/c",
		"what?", "?q=1&r=2", "#frag", "a#b", "new\nline", "tab\there", "cr\rhere",
		`back\slash`, "quote\"d", "it's", "<tag>", "ünïcödé", "日本語", "emoji😀", "+plus", "semi;colon", "a:b", "@at",
	}
	for i, n := range names {
		mustWrite(t, filepath.Join(env.root, n), strings.Repeat("v", i+1))
	}
	mustWrite(t, filepath.Join(env.root, longPath(512)), "exactly 512 bytes of key")
	env.writeConfig("", "include_hidden: true")
	syncOK(t, env, cliOpts{})
	want := expectTree(t, env.root, nil)
	for _, n := range names {
		if _, ok := want[n]; !ok {
			t.Fatalf("test bug: %q not expected", n)
		}
	}
	before := env.writes()
	res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
	if res.code != exitOK || env.writes() != before {
		t.Fatalf("second sync: want exit 0 and no writes, got %d writes\n%s", env.writes()-before, res)
	}
	env.waitConverged(t, want, converge)
}

// TestHostileUnpublishableNames: a file whose key would be 513 bytes and a
// file whose name is not UTF-8 cannot be keys. They are not published, the
// rest is, check fails naming them and sync warns naming them.
func TestHostileUnpublishableNames(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	long := filepath.Join(env.root, longPath(513))
	bad := filepath.Join(env.root, "bad\xff\xfename.txt")
	mustWrite(t, long, "513")
	mustWrite(t, bad, "not utf-8")
	mustWrite(t, filepath.Join(env.root, "good.txt"), "good")
	env.writeConfig("", "")

	res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
	env.waitConverged(t, map[string]kvEntry{"good.txt": {Value: "good"}}, converge)
	for _, w := range []string{filepath.Base(long), "over the KV limit of 512", `bad\xff\xfename.txt`, "not valid UTF-8"} {
		if !strings.Contains(res.stderr, w) {
			t.Errorf("sync does not warn with %q:\n%s", w, res)
		}
	}
	chk := runCLI(t, cliOpts{}, "check", "--config", env.config)
	if chk.code != exitSyncFailed || !strings.Contains(chk.stdout, "2 skipped (key_invalid)") {
		t.Errorf("check: want exit 1 and 2 key_invalid problems\n%s", chk)
	}
	// The exit codes promise 1 when "some key could not be written"; check
	// counts these files as problems, so sync must not report success.
	if res.code != exitSyncFailed {
		t.Errorf("sync left 2 files unpublished (no valid key) but exited %d, want %d like check\n%s", res.code, exitSyncFailed, res)
	}
}

// TestHostileTooLarge: a file of 25 MiB + 1 byte is held back (exit 1, named)
// and KV keeps its previous value; exactly 25 MiB is published.
func TestHostileTooLarge(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	big := filepath.Join(env.root, "big.bin")
	mustWrite(t, big, "small for now")
	env.writeConfig("", "")
	syncOK(t, env, cliOpts{})
	good := expectTree(t, env.root, nil)

	if err := os.Truncate(big, 25<<20+1); err != nil {
		t.Fatal(err)
	}
	res := runCLI(t, cliOpts{}, "sync", "--config", env.config)
	if res.code != exitSyncFailed || !strings.Contains(res.stderr, big) || !strings.Contains(res.stderr, "too large") {
		t.Fatalf("sync: want exit 1 naming %s as too large\n%s", big, res)
	}
	env.waitConverged(t, good, converge)

	if err := os.Truncate(big, 25<<20); err != nil {
		t.Fatal(err)
	}
	syncOK(t, env, cliOpts{})
}

// unprivilegedEnv is a kvEnv whose root, filled by fill, and state live in
// a world-readable temporary directory, with the options that run kvsync
// as nobody (65534) when the tests run as root, who ignores permission bits.
func unprivilegedEnv(t *testing.T, fill func(root string)) (*kvEnv, cliOpts) {
	t.Helper()
	env := newKVEnv(t, emulator.Faults{})
	var o cliOpts
	base, err := os.MkdirTemp("", "kvsync-unreadable-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		filepath.Walk(base, func(p string, _ os.FileInfo, _ error) error { os.Chmod(p, 0o755); return nil })
		os.RemoveAll(base)
	})
	env.root, env.stateDir = filepath.Join(base, "root"), filepath.Join(base, "state")
	for _, d := range []string{env.root, env.stateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fill(env.root)
	env.writeConfig("", "")
	if os.Geteuid() == 0 {
		const nobody = 65534
		o.cred = &syscall.Credential{Uid: nobody, Gid: nobody}
		// The binary's directory is private to the test run; let nobody in.
		for _, p := range []string{filepath.Dir(kvsyncBin), base} {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range []string{env.stateDir, env.config} {
			if err := os.Chown(p, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
	}
	return env, o
}

// TestHostileUnreadable: a file kvsync may not read is held back and keeps
// its last value in KV; a directory it may not list makes the sync fail and
// deletes nothing below it. Root ignores permission bits, so as root kvsync
// runs as nobody (65534) on a world-readable tree.
func TestHostileUnreadable(t *testing.T) {
	env, o := unprivilegedEnv(t, func(root string) {
		mustWrite(t, filepath.Join(root, "ok.txt"), "ok")
		mustWrite(t, filepath.Join(root, "secret.txt"), "readable once")
		mustWrite(t, filepath.Join(root, "locked/inner.txt"), "inside")
	})
	syncOK(t, env, o)
	good := expectTree(t, env.root, nil)

	secret := filepath.Join(env.root, "secret.txt")
	locked := filepath.Join(env.root, "locked")
	mustWrite(t, secret, "changed, then made unreadable")
	for _, p := range []string{secret, locked} {
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(env.root, "new.txt"), "new")
	res := runCLI(t, o, "sync", "--config", env.config)
	if res.code != exitSyncFailed {
		t.Fatalf("sync: want exit 1\n%s", res)
	}
	for _, w := range []string{secret, locked} {
		if !strings.Contains(res.stderr, w) {
			t.Errorf("sync output does not name %s:\n%s", w, res)
		}
	}
	good["new.txt"] = kvEntry{Value: "new"}
	env.waitConverged(t, good, converge)
}

// TestHostileUnreadableFirstPublish: on a first publish the scan reads no
// file (every key is written anyway), so an unreadable one is found when it
// is sent; it is held back all the same, named as such, and the rest is
// published.
func TestHostileUnreadableFirstPublish(t *testing.T) {
	env, o := unprivilegedEnv(t, func(root string) {
		mustWrite(t, filepath.Join(root, "ok.txt"), "ok")
		mustWrite(t, filepath.Join(root, "d/secret.txt"), "not for nobody")
		mustWrite(t, filepath.Join(root, "d/z.txt"), "z")
	})
	secret := filepath.Join(env.root, "d/secret.txt")
	if err := os.Chmod(secret, 0); err != nil {
		t.Fatal(err)
	}
	res := runCLI(t, o, "sync", "--config", env.config)
	if res.code != exitSyncFailed {
		t.Fatalf("sync: want exit 1\n%s", res)
	}
	if !strings.Contains(res.stdout, "held back: d/secret.txt ("+secret+")") || !strings.Contains(res.stdout, "1 held back") {
		t.Errorf("sync output does not report %s as held back:\n%s", secret, res)
	}
	env.waitConverged(t, map[string]kvEntry{"ok.txt": {Value: "ok"}, "d/z.txt": {Value: "z"}}, converge)
}

// TestHostileSpecialFiles: a symlink loop, a symlink to /etc/passwd, a
// dangling symlink, a symlink to a directory outside the root and a FIFO are
// skipped with a warning naming them; nothing blocks and nothing outside the
// root is read.
func TestHostileSpecialFiles(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	outside := t.TempDir()
	mustWrite(t, filepath.Join(outside, "secret.txt"), "outside the root")
	mustWrite(t, filepath.Join(env.root, "index.html"), "index")
	links := map[string]string{
		"loop1": "loop2", "loop2": "loop1", "self": "self",
		"passwd":   "/etc/passwd",
		"dangling": "does-not-exist",
		"outdir":   outside,
		"outfile":  filepath.Join(outside, "secret.txt"),
		"escape":   "../" + filepath.Base(outside) + "/secret.txt",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(env.root, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"pipe", "sub/pipe2"} {
		os.MkdirAll(filepath.Dir(filepath.Join(env.root, f)), 0o755)
		if err := syscall.Mkfifo(filepath.Join(env.root, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env.writeConfig("", "")
	res := runCLI(t, cliOpts{timeout: 60 * time.Second}, "sync", "--config", env.config)
	if res.code != exitOK {
		t.Fatalf("sync: want exit 0 (these are skipped by design)\n%s", res)
	}
	env.waitConverged(t, map[string]kvEntry{"index.html": {Value: "index"}}, converge)
	for name := range links {
		if !strings.Contains(res.stderr, filepath.Join(env.root, name)) {
			t.Errorf("no warning names %s:\n%s", name, res.stderr)
		}
	}
	passwd, _ := os.ReadFile("/etc/passwd")
	for k, e := range env.em.Snapshot(testAccount, testNamespace) {
		if bytes.Contains(e.Value, []byte("outside the root")) || len(passwd) > 0 && bytes.Equal(e.Value, passwd) {
			t.Errorf("key %q holds a file from outside the root", k)
		}
	}
}

// pauser passes requests to the emulator, but holds the first PUT of a
// value mid-body until the test has changed the file.
type pauser struct {
	em     *emulator.Emulator
	after  int64
	once   sync.Once
	paused chan string // the key being written
	resume chan struct{}
}

type pausingBody struct {
	io.ReadCloser
	p    *pauser
	key  string
	read int64
}

func (b *pausingBody) Read(q []byte) (int, error) {
	n, err := b.ReadCloser.Read(q)
	b.read += int64(n)
	if b.read >= b.p.after {
		b.p.once.Do(func() {
			b.p.paused <- b.key
			<-b.p.resume
		})
	}
	return n, err
}

func (p *pauser) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, key, ok := strings.Cut(r.URL.Path, "/values/"); ok && r.Method == http.MethodPut {
		r.Body = &pausingBody{ReadCloser: r.Body, p: p, key: key}
	}
	p.em.ServeHTTP(w, r)
}

// TestHostileChangesDuringUpload: a file that grows, shrinks or vanishes
// while it is being uploaded, or vanishes before its turn, never leaves a
// mixture in KV: each ends as the file's final content, or absent.
func TestHostileChangesDuringUpload(t *testing.T) {
	const size = 20 << 20 // well past loopback socket buffers
	cases := []struct {
		name   string
		change func(t *testing.T, writing, other string)
	}{
		{"grows", func(t *testing.T, w, _ string) {
			f, err := os.OpenFile(w, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("appended during the upload")
			f.Close()
		}},
		{"shrinks", func(t *testing.T, w, _ string) {
			if err := os.Truncate(w, size/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"vanishes mid-read", func(t *testing.T, w, _ string) {
			if err := os.Remove(w); err != nil {
				t.Fatal(err)
			}
		}},
		{"the next file vanishes before its turn", func(t *testing.T, _, o string) {
			if err := os.Remove(o); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			em, err := emulator.New(emulator.Options{Token: testToken})
			if err != nil {
				t.Fatal(err)
			}
			p := &pauser{em: em, after: 1 << 20, paused: make(chan string, 1), resume: make(chan struct{})}
			env := newKVEnvFrom(t, em)
			front := httptest.NewServer(p)
			t.Cleanup(front.Close)
			for _, n := range []string{"a.bin", "b.bin"} {
				mustWrite(t, filepath.Join(env.root, n), strings.Repeat(n[:1], size))
			}
			mustWrite(t, filepath.Join(env.root, "small.txt"), "small")
			// One request at a time, every file its own PUT.
			env.writeConfig("concurrency: 1", "bulk_threshold: 0")
			b, _ := os.ReadFile(env.config)
			os.WriteFile(env.config, []byte(strings.Replace(string(b), env.srv.URL, front.URL, 1)), 0o600)

			cmd := execKvsync(env, "sync", "--config", env.config)
			out := &testkit.Buffer{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case key := <-p.paused:
				other := map[string]string{"a.bin": "b.bin", "b.bin": "a.bin"}[key]
				if other == "" {
					close(p.resume)
					t.Fatalf("test bug: paused on %q", key)
				}
				tc.change(t, filepath.Join(env.root, key), filepath.Join(env.root, other))
				close(p.resume)
			case err := <-done:
				t.Fatalf("sync ended before a large PUT: %v\n%s", err, out)
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("no large PUT within 60s\n%s", out)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Logf("first sync: %v\n%s", err, tail(out.String(), 10))
				}
			case <-time.After(90 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("sync did not finish\n%s", tail(out.String(), 20))
			}
			// Whatever the first pass did, what KV holds is whole: a file's
			// content at some moment. The next sync converges on the tree.
			for k, e := range em.Snapshot(testAccount, testNamespace) {
				if strings.HasSuffix(k, ".bin") {
					c := k[:1]
					if n := len(e.Value); n != size && n != size/2 && n != size+len("appended during the upload") ||
						strings.Trim(string(e.Value[:n-min(n, len("appended during the upload"))]), c) != "" {
						t.Errorf("key %q holds %d bytes that are no version of its file", k, n)
					}
				}
			}
			syncOK(t, env, cliOpts{})
		})
	}
}
