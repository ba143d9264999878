package watcher

import (
	"context"
	"path"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
)

// TestPublishesAgreesWithScan: Publishes and Descends answer, without a
// scan, exactly what a scan of the tree publishes, under every kind of rule.
func TestPublishesAgreesWithScan(t *testing.T) {
	t.Parallel()
	files := []string{
		"index.html", "cf-token", "kvsync.yaml", "page.html.meta.json", "page.html",
		"state/state.db", "state/emulator/kv.log", ".state/state.db", ".well-known/security.txt",
		"a/.hidden/x.txt", "a/b/c.txt", "drafts/d.txt", "a.swp", ".#lock", "notes.txt~",
		"secret/cf-token", "secret/cf-token.meta.json",
	}
	dirs := []string{".", "state", "state/emulator", ".state", ".well-known", "a", "a/.hidden", "a/b", "drafts", "secret"}
	cases := []struct {
		name string
		mod  func(*Options)
	}{
		{"defaults", func(*Options) {}},
		{"exclude globs", func(o *Options) { o.Exclude = []string{"state", "drafts/**", "cf-token", "secret/*"} }},
		{"include globs", func(o *Options) { o.Include = []string{"**/*.html", "**/*.txt"} }},
		{"hidden included", func(o *Options) { o.IncludeHidden = true }},
		{"no default excludes", func(o *Options) { o.NoDefaultExcludes = true }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range files {
				content := "content of " + f
				if isSidecar(f) {
					content = `{"of":"` + f + `"}`
				}
				write(t, root, f, content)
			}
			opts := testOpts(t, root)
			tc.mod(&opts)
			w, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			snap, err := w.Scan(context.Background(), desired.TriggerManual)
			if err != nil {
				t.Fatal(err)
			}
			keys := map[string]bool{}
			for _, st := range snap.States {
				keys[st.Key] = true
			}
			for _, f := range files {
				want := keys[sidecarOwner(f)]
				if got := opts.Publishes(f); got != want {
					t.Errorf("Publishes(%q) = %v, but the scan published it: %v", f, got, want)
				}
			}
			for _, d := range dirs {
				below := false
				for k := range keys {
					if d == "." || strings.HasPrefix(k, d+"/") {
						below = true
					}
				}
				if !opts.Descends(d) && below {
					t.Errorf("Descends(%q) = false, but the scan published keys below it", d)
				}
				// A plain name in a descended directory is published unless
				// globs narrow what is ("secret/*" excludes every file there
				// but still descends).
				if probe := path.Join(d, "probe.txt"); opts.Descends(d) && opts.Include == nil && opts.Exclude == nil && !opts.Publishes(probe) {
					t.Errorf("Descends(%q) = true but Publishes(%q) = false", d, probe)
				}
			}
		})
	}
}
