package watcher

import (
	"path"
	"testing"
)

func TestChildPaths(t *testing.T) {
	t.Parallel()
	cases := []struct{ rel, abs, name, crel, cabs string }{
		{"", "/srv/www", "a.txt", "a.txt", "/srv/www/a.txt"},
		{"d/e", "/srv/www/d/e", "f", "d/e/f", "/srv/www/d/e/f"},
		{"", "/", "etc", "etc", "/etc"},
		{"d", "/d", "x", "d/x", "/d/x"},
		// An abs that does not end in rel (never made by walk) still
		// yields the right paths, just not shared.
		{"d", "/elsewhere", "x", "d/x", "/elsewhere/x"},
	}
	for _, c := range cases {
		crel, cabs := childPaths(c.rel, c.abs, c.name)
		if crel != c.crel || cabs != c.cabs {
			t.Errorf("childPaths(%q, %q, %q) = %q, %q; want %q, %q", c.rel, c.abs, c.name, crel, cabs, c.crel, c.cabs)
		}
	}
}

// isDebris checks the debris globs as prefixes, suffixes and names; it
// must say exactly what path.Match on them says.
func TestIsDebrisMatchesGlobs(t *testing.T) {
	t.Parallel()
	names := []string{"", "a", "4913", "x4913", ".DS_Store", "DS_Store", "Thumbs.db", "thumbs.db", "desktop.ini",
		"a.swp", ".swp", "a.swpx", "a.swo", "a.swx", "a~", "~", "~a", ".#a", ".#", "#", "##", "#a#", "#a", "a#",
		"a.tmp", ".a.tmp", ".tmp", "a.part", "a.crdownload", "crdownload", "index.html", ".env", ".env.sample",
		".index.html.Ab12Cd", ".index.html.abcdef", "index.html.Ab12Cd", "a[b].txt", "a*b", `a\b`}
	for _, n := range names {
		want := false
		for _, p := range debris {
			if ok, _ := path.Match(p, n); ok {
				want = true
			}
		}
		if m := rsyncTemp.FindStringSubmatch(n); m != nil && mixedSuffix(m[1]) {
			want = true
		}
		if got := isDebris(n); got != want {
			t.Errorf("isDebris(%q) = %v, want %v", n, got, want)
		}
	}
}
