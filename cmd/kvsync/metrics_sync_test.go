package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

var scrapeLineRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)

// scrapeValue is the value of the series name{labels} in scrape, matched on
// exactly the labels given; ok is false when there is none.
func scrapeValue(scrape, name string, labels map[string]string) (v float64, ok bool) {
	for _, line := range strings.Split(scrape, "\n") {
		m := scrapeLineRE.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		got := map[string]string{}
		for _, kv := range regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(m[2], -1) {
			got[kv[1]] = kv[2]
		}
		if len(got) != len(labels) {
			continue
		}
		match := true
		for k, want := range labels {
			if got[k] != want {
				match = false
			}
		}
		if match {
			f, err := strconv.ParseFloat(m[3], 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestMetricsPerSync runs a daemon with two syncs and reads their series
// apart in its scrape: the sync label is the configured name, each sync
// counts its own files and directories, and a reload that removes a sync
// removes its series.
func TestMetricsPerSync(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	docs := filepath.Join(filepath.Dir(env.root), "docs")
	mustWrite(t, filepath.Join(env.root, "index.html"), "<h1>hello</h1>")
	mustWrite(t, filepath.Join(env.root, "sub/page.html"), "<p>page</p>")
	mustWrite(t, filepath.Join(docs, "a/one.txt"), "one")
	mustWrite(t, filepath.Join(docs, "b/two.txt"), "two")
	mustWrite(t, filepath.Join(docs, "b/three.txt"), "three")
	writeConfig := func(withDocs bool) {
		cfg := fmt.Sprintf(`state_dir: %s
metrics_listen: 127.0.0.1:0
log_level: debug
api:
  base_url: %s/client/v4
  account_id: %s
syncs:
  - name: site
    dir: %s
    namespace_id: %s
    prefix: site/
    quiet: 100ms
    max_delay: 1s
`, env.stateDir, env.srv.URL, testAccount, env.root, testNamespace)
		if withDocs {
			cfg += fmt.Sprintf(`  - name: docs
    dir: %s
    namespace_id: %s
    prefix: docs/
    quiet: 100ms
    max_delay: 1s
`, docs, testNamespace)
		}
		env.config = filepath.Join(filepath.Dir(env.root), "kvsync.yaml")
		if err := os.WriteFile(env.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(true)
	d := env.startDaemon()

	type want struct {
		name   string
		labels map[string]string
		value  float64
	}
	// waitScrape polls the scrape until every want holds, and names those
	// that do not when converge runs out.
	waitScrape := func(step string, wants []want, gone ...string) string {
		t.Helper()
		deadline := time.Now().Add(converge)
		for {
			scrape := d.scrape()
			var unmet []string
			for _, w := range wants {
				if v, ok := scrapeValue(scrape, w.name, w.labels); !ok || v != w.value {
					unmet = append(unmet, fmt.Sprintf("%s%v = %v (present %v), want %v", w.name, w.labels, v, ok, w.value))
				}
			}
			for _, g := range gone {
				if strings.Contains(scrape, g) {
					unmet = append(unmet, "a series with "+g)
				}
			}
			if len(unmet) == 0 {
				return scrape
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s:\n%s", step, strings.Join(unmet, "\n"))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	site, docsL := map[string]string{"sync": "site"}, map[string]string{"sync": "docs"}
	with := func(l map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range l {
			out[a] = b
		}
		return out
	}
	scrape := waitScrape("both syncs published", []want{
		{"kvsync_uploads_total", with(site, "result", "success"), 2},
		{"kvsync_uploads_total", with(docsL, "result", "success"), 3},
		{"kvsync_upload_bytes_total", with(site, "result", "success"), float64(len("<h1>hello</h1>") + len("<p>page</p>"))},
		{"kvsync_upload_bytes_total", with(docsL, "result", "success"), float64(len("one") + len("two") + len("three"))},
		{"kvsync_full_syncs_total", with(site, "trigger", "startup"), 1},
		{"kvsync_full_syncs_total", with(docsL, "trigger", "startup"), 1},
		{"kvsync_watched_directories", site, 2},
		{"kvsync_watched_directories", docsL, 3},
		{"kvsync_queue_depth", site, 0},
		{"kvsync_queue_depth", docsL, 0},
		{"kvsync_files_held_back", site, 0},
		{"kvsync_files_held_back", docsL, 0},
		{"kvsync_rate_limit_paused_until_timestamp_seconds", nil, 0},
	})
	// The bucket is shared: one series, with no sync label.
	if v, ok := scrapeValue(scrape, "kvsync_rate_limit_tokens", nil); !ok || v <= 0 {
		t.Errorf("kvsync_rate_limit_tokens = %v (present %v), want a positive count", v, ok)
	}
	if _, ok := scrapeValue(scrape, "kvsync_api_requests_total", map[string]string{"op": "bulk_put", "code": "200", "sync": "site"}); ok {
		t.Error("kvsync_api_requests_total has a sync label: API series are per account")
	}

	// A directory made in one tree counts there and only there.
	if err := os.Mkdir(filepath.Join(docs, "c"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitScrape("mkdir in docs", []want{
		{"kvsync_watched_directories", site, 2},
		{"kvsync_watched_directories", docsL, 4},
	})

	writeConfig(false)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitScrape("docs removed by a reload", []want{
		{"kvsync_uploads_total", with(site, "result", "success"), 2},
		{"kvsync_watched_directories", site, 2},
	}, `sync="docs"`)
	d.stop()
}
