package watcher

import "testing"

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
