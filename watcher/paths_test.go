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
// must say exactly what path.Match on them says. rsync's temp names are no
// glob, so their expectations are written out.
func TestIsDebrisMatchesGlobs(t *testing.T) {
	t.Parallel()
	names := []string{"", "a", "4913", "x4913", ".DS_Store", "DS_Store", "Thumbs.db", "thumbs.db", "desktop.ini",
		"a.swp", ".swp", "a.swpx", "a.swo", "a.swx", "a~", "~", "~a", ".#a", ".#", "#", "##", "#a#", "#a", "a#",
		"a.tmp", ".a.tmp", ".tmp", "a.part", "a.crdownload", "crdownload", "index.html", ".env", "a[b].txt", "a*b", `a\b`}
	for _, n := range names {
		want := false
		for _, p := range debris {
			if ok, _ := path.Match(p, n); ok {
				want = true
			}
		}
		if got := isDebris(n); got != want {
			t.Errorf("isDebris(%q) = %v, want %v", n, got, want)
		}
	}
	for n, want := range map[string]bool{
		".index.html.Ab12Cd":  true,  // rsync's mkstemp suffix: mixed case and digits
		".index.html.aB3xYz":  true,  //
		".a.b.Q1w2E3":         true,  //
		".index.html.abcdef":  false, // a word, not a random suffix
		".env.sample":         false, //
		".index.html.ABCDEF":  false, //
		".index.html.123456":  false, //
		"index.html.Ab12Cd":   false, // rsync's temp names start with a dot
		".index.html.Ab12C":   false, // five characters
		".index.html.Ab12Cde": false, // seven
		".Ab12Cd":             false, // no name before the suffix
	} {
		if got := isDebris(n); got != want {
			t.Errorf("isDebris(%q) = %v, want %v", n, got, want)
		}
	}
}
