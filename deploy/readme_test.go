package deploy_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// packageRow is a row of README's package table: "| `watcher` | ...", or a
// folder row ending in "/" that stands for everything below it.
var packageRow = regexp.MustCompile("(?m)^\\| `([a-z0-9_/]+)` \\|")

// TestReadmePackageTable: every Go package of the repository has its row in
// README's package table (a folder row, such as `deploy/`, covers what is
// below it), and every row names something that exists, so the table a
// newcomer reads first is the tree.
func TestReadmePackageTable(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "| package | holds |")
	if start < 0 {
		t.Fatal(`README has no "| package | holds |" table`)
	}
	table, _, _ := strings.Cut(text[start:], "\n\n")
	var rows []string
	for _, m := range packageRow.FindAllStringSubmatch(table, -1) {
		rows = append(rows, m[1])
	}
	if len(rows) < 10 {
		t.Fatalf("found %d rows: the table's format changed and the test no longer reads it", len(rows))
	}
	pkgs := goPackages(t, "..")
	for _, p := range pkgs {
		covered := slices.ContainsFunc(rows, func(r string) bool {
			return r == p || strings.HasSuffix(r, "/") && (p+"/" == r || strings.HasPrefix(p, r))
		})
		if !covered {
			t.Errorf("package %s has no row in README's package table", p)
		}
	}
	for _, r := range rows {
		if _, err := os.Stat(filepath.Join("..", r)); err != nil {
			t.Errorf("README's package table names %s, which is not in the tree", r)
		}
		if !strings.HasSuffix(r, "/") && !slices.Contains(pkgs, r) {
			t.Errorf("README's package table names %s, which holds no Go package", r)
		}
	}
}

// goPackages lists the directories below root that hold non-test Go files,
// relative to root and /-separated.
func goPackages(t *testing.T, root string) []string {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "out") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") {
			rel, err := filepath.Rel(root, filepath.Dir(p))
			if err != nil {
				return err
			}
			seen[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
