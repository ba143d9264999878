package watcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

func scanKeys(t *testing.T, opts Options) map[string]desired.State {
	t.Helper()
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := w.Scan(context.Background(), desired.TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Complete {
		t.Fatalf("incomplete snapshot: %s", snap.Reason)
	}
	out := make(map[string]desired.State)
	for _, st := range snap.States {
		out[st.Key] = st
	}
	return out
}

func keysOf(m map[string]desired.State) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return strings.Join(sortedStrings(ks), ",")
}

func sortedStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

func TestScanFilters(t *testing.T) {
	t.Parallel()
	tree := []string{
		"index.html", "a/b.css", "a/b.css~", "a/.b.css.swp", "a/b.css.swp", "a/4913", "#auto#", ".#lock",
		".DS_Store", "Thumbs.db", "dl.part", "x.tmp", ".x.tmp", ".page.html.Xy12Ab", ".env.sample",
		".git/HEAD", ".well-known/acme", "node_modules/m.js", "sub/node_modules/m.js", "build/out.js",
		"logs/app.log", "page.html.meta.json",
	}
	cases := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"defaults", nil, ".well-known/acme,a/b.css,build/out.js,index.html,logs/app.log,node_modules/m.js,sub/node_modules/m.js"},
		{"exclude", func(o *Options) { o.Exclude = []string{"**/node_modules", "build/**", "**/*.log"} }, ".well-known/acme,a/b.css,index.html"},
		{"include", func(o *Options) { o.Include = []string{"**/*.css", "**/*.js"} }, "a/b.css,build/out.js,node_modules/m.js,sub/node_modules/m.js"},
		{"include keeps default excludes", func(o *Options) { o.Include = []string{"**"} }, ".well-known/acme,a/b.css,build/out.js,index.html,logs/app.log,node_modules/m.js,sub/node_modules/m.js"},
		{"exclude wins over include", func(o *Options) { o.Include = []string{"**/*.js"}; o.Exclude = []string{"build"} }, "node_modules/m.js,sub/node_modules/m.js"},
		{"include hidden", func(o *Options) { o.IncludeHidden = true; o.Exclude = []string{"**/node_modules", "build", "logs"} },
			".env.sample,.git/HEAD,.well-known/acme,a/b.css,index.html"},
		{"no default excludes", func(o *Options) {
			o.NoDefaultExcludes = true
			o.Exclude = []string{"**/node_modules", "build", "logs", "a/b.css"}
		}, "#auto#,.well-known/acme,Thumbs.db,a/4913,a/b.css.swp,a/b.css~,dl.part,index.html,x.tmp"},
		{"prefix", func(o *Options) { o.Prefix = "site/"; o.Include = []string{"index.html"} }, "site/index.html"},
	}
	root := t.TempDir()
	for _, rel := range tree {
		write(t, root, rel, rel)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOpts(t, root)
			if tc.edit != nil {
				tc.edit(&opts)
			}
			if got := keysOf(scanKeys(t, opts)); got != tc.want {
				t.Fatalf("keys:\ngot  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestScanInvalidKeys(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	seg := strings.Repeat("é", 100) // 200 bytes, 100 runes
	long := seg + "/" + seg
	write(t, root, "ok.txt", "ok")
	write(t, root, "d/"+long, "fits")                    // 403 bytes
	write(t, root, "dd/"+long+"/"+seg[:120], "too long") // 525 bytes
	bad := string([]byte{'b', 0xff, 'd'})
	if err := os.WriteFile(filepath.Join(root, bad), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts := testOpts(t, root)
	opts.Metrics = metrics.New(reg, "test").Sync("test")
	got := scanKeys(t, opts)
	if keysOf(got) != "d/"+long+",ok.txt" {
		t.Fatalf("keys = %s", keysOf(got))
	}
	if v := testutil.ToFloat64(opts.Metrics.FilesSkipped.WithLabelValues("key_invalid")); v != 2 {
		t.Fatalf("files_skipped{key_invalid} = %v, want 2", v)
	}
}

func TestScanExpirationRules(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, rel := range []string{"news/a.html", "news/old/b.html", "static/app.js", "other.txt"} {
		write(t, root, rel, rel)
	}
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	opts := testOpts(t, root)
	opts.ExpirationRules = []ExpirationRule{
		{Match: "news/old/**", At: at},
		{Match: "news/**", TTL: time.Hour},
	}
	opts.DefaultExpiration = desired.Expiration{TTL: 24 * time.Hour}
	got := scanKeys(t, opts)
	want := map[string]desired.Expiration{
		"news/a.html":     {TTL: time.Hour},
		"news/old/b.html": {At: at},
		"static/app.js":   {TTL: 24 * time.Hour},
		"other.txt":       {TTL: 24 * time.Hour},
	}
	for k, e := range want {
		if !got[k].Expiration.Equal(e) {
			t.Errorf("%s: expiration %+v, want %+v", k, got[k].Expiration, e)
		}
	}
}

func TestScanIncomplete(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write(t, dir, "file", "x")
	for _, tc := range []struct{ name, root string }{
		{"missing", filepath.Join(dir, "nope")},
		{"not a directory", filepath.Join(dir, "file")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := New(testOpts(t, tc.root))
			if err != nil {
				t.Fatal(err)
			}
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil || snap.Complete || snap.Reason == "" || len(snap.States) != 0 {
				t.Fatalf("Scan = %+v, %v; want incomplete with a reason", snap, err)
			}
		})
	}
	t.Run("empty root is complete", func(t *testing.T) {
		w, err := New(testOpts(t, t.TempDir()))
		if err != nil {
			t.Fatal(err)
		}
		snap, err := w.Scan(context.Background(), desired.TriggerManual)
		if err != nil || !snap.Complete || len(snap.States) != 0 {
			t.Fatalf("Scan = %+v, %v; want complete and empty", snap, err)
		}
	})
	t.Run("unreadable subdirectory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("running as root, which reads any directory")
		}
		root := t.TempDir()
		write(t, root, "locked/f", "x")
		os.Chmod(filepath.Join(root, "locked"), 0)
		t.Cleanup(func() { os.Chmod(filepath.Join(root, "locked"), 0o755) })
		w, _ := New(testOpts(t, root))
		snap, _ := w.Scan(context.Background(), desired.TriggerManual)
		if snap.Complete || !strings.Contains(snap.Reason, "locked") {
			t.Fatalf("Scan = %+v, want incomplete naming the directory", snap)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		root := t.TempDir()
		write(t, root, "f", "x")
		w, _ := New(testOpts(t, root))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		snap, err := w.Scan(ctx, desired.TriggerManual)
		if !errors.Is(err, context.Canceled) || snap.Complete {
			t.Fatalf("Scan = %+v, %v; want incomplete and context.Canceled", snap, err)
		}
	})
}

// TestRescanUnchangedOpensNothing proves the hash cache: a second scan of
// an unchanged tree opens no file, a touched file is read again, and a
// same-size rewrite that restores mtime is still caught by ctime.
func TestRescanUnchangedOpensNothing(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for i := range 50 {
		write(t, root, fmt.Sprintf("d%d/f%d.txt", i%5, i), fmt.Sprint(i))
	}
	write(t, root, "d0/f0.txt.meta.json", `{"x":1}`)
	opened := &countingOpen{}
	opts := testOpts(t, root)
	// The files were written just now; pretend time has moved on so their
	// timestamps are settled (see desired.RacyWindow).
	clock := time.Now().Add(time.Hour)
	opts.Now = func() time.Time { return clock }
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	w.open = opened.open
	scan := func() desired.Snapshot {
		snap, err := w.Scan(context.Background(), desired.TriggerPeriodic)
		if err != nil || !snap.Complete {
			t.Fatal(snap.Reason, err)
		}
		return snap
	}
	first := scan()
	if n := opened.count(); n != 51 {
		t.Fatalf("first scan opened %d files, want 51", n)
	}
	if second := scan(); opened.count() != 51 || len(second.States) != len(first.States) {
		t.Fatalf("rescan of an unchanged tree opened %d files", opened.count()-51)
	}
	p := filepath.Join(root, "d1/f1.txt")
	fi, _ := os.Stat(p)
	write(t, root, "d1/f1.txt", "X") // same size as "1"
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	clock = time.Now().Add(time.Hour)
	snap := scan()
	if opened.count() != 52 || opened.names[51] != p {
		t.Fatalf("after one rewrite the scan opened %v", opened.names[51:])
	}
	for _, st := range snap.States {
		if st.Key == "d1/f1.txt" && st.Hash != sha("X") {
			t.Fatalf("rewritten file has hash %s", st.Hash)
		}
		if st.Key == "d0/f0.txt" && string(st.Metadata) != `{"x":1}` {
			t.Fatalf("metadata lost from the cache: %s", st.Metadata)
		}
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		edit  func(*Options)
		field string
	}{
		{"no root", func(o *Options) { o.Root = "" }, "Root"},
		{"bad include", func(o *Options) { o.Include = []string{"a/[b"} }, "Include[0]"},
		{"bad exclude", func(o *Options) { o.Exclude = []string{"ok", "[z"} }, "Exclude[1]"},
		{"short ttl", func(o *Options) { o.ExpirationRules = []ExpirationRule{{Match: "**", TTL: 59 * time.Second}} }, "ExpirationRules[0]"},
		{"ttl and at", func(o *Options) {
			o.ExpirationRules = []ExpirationRule{{Match: "**", TTL: time.Hour, At: time.Now()}}
		}, "ExpirationRules[0]"},
		{"rule without expiration", func(o *Options) { o.ExpirationRules = []ExpirationRule{{Match: "**"}} }, "ExpirationRules[0]"},
		{"rule without glob", func(o *Options) { o.ExpirationRules = []ExpirationRule{{TTL: time.Hour}} }, "ExpirationRules[0].Match"},
		{"default short", func(o *Options) { o.DefaultExpiration = desired.Expiration{TTL: time.Second} }, "DefaultExpiration"},
		{"negative quiet", func(o *Options) { o.Quiet = -1 }, "Quiet"},
		{"long prefix", func(o *Options) { o.Prefix = strings.Repeat("p", 512) }, "Prefix"},
		{"prefix not utf8", func(o *Options) { o.Prefix = "\xff" }, "Prefix"},
		{"negative max size", func(o *Options) { o.MaxFileSize = -1 }, "MaxFileSize"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Root: t.TempDir()}
			tc.edit(&o)
			_, err := New(o)
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("New: %v; want ErrInvalidOptions naming %s", err, tc.field)
			}
		})
	}
	w, err := New(Options{Root: "relative/dir", Quiet: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(w.opts.Root) || w.opts.Quiet != MinQuiet || w.opts.MaxDelay != DefaultMaxDelay ||
		w.opts.MaxFileSize != 25<<20 || w.opts.RescanInterval != DefaultRescanInterval {
		t.Fatalf("defaults not applied: %+v", w.opts)
	}
}
