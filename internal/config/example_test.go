package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

const (
	examplePath = "../../configs/kvsync.example.yaml"
	localPath   = "../../configs/local.yaml"
)

func TestExampleConfigIsValid(t *testing.T) {
	c, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	// The example writes out the defaults it documents ("Default: ..."):
	// they must be the real ones.
	d := Default()
	if c.LogLevel != d.LogLevel || c.LogFormat != d.LogFormat || c.MetricsListen != d.MetricsListen {
		t.Errorf("top-level values differ from the defaults: %+v", c)
	}
	api := c.API
	api.AccountID, api.TokenFile = "", ""
	if api != d.API {
		t.Errorf("api values differ from the defaults:\n%+v\n%+v", api, d.API)
	}
	if len(c.Syncs) != 1 {
		t.Fatalf("syncs: %d", len(c.Syncs))
	}
	s := c.Syncs[0]
	s.Name, s.Dir, s.NamespaceID, s.Prefix, s.Include, s.Exclude, s.Expiration = "", "", "", "", nil, nil, nil
	if !reflect.DeepEqual(s, DefaultSync()) {
		t.Errorf("sync values differ from the defaults:\n%+v\n%+v", s, DefaultSync())
	}
	if c.Syncs[0].Name != nameFromDir(c.Syncs[0].Dir) {
		t.Errorf("the example's name %q is not the default derived from dir %q", c.Syncs[0].Name, c.Syncs[0].Dir)
	}
}

// TestExampleDocumentsEveryField: every yaml key of the Config types is
// written (not commented out) in the example, and each top-level, api and
// sync key has a comment right above it or on its line, so new fields cannot
// go undocumented.
func TestExampleDocumentsEveryField(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseFile(data, examplePath)
	if err != nil {
		t.Fatal(err)
	}
	lastElem := regexp.MustCompile(`([a-z_]+)$`)
	written := map[string]bool{}
	for path := range c.src.m {
		if m := lastElem.FindStringSubmatch(path); m != nil {
			written[m[1]] = true
		}
	}
	for _, typ := range []reflect.Type{reflect.TypeOf(Config{}), reflect.TypeOf(API{}), syncType, reflect.TypeOf(ExpirationRule{})} {
		for _, name := range fieldNames(typ) {
			if !written[name] {
				t.Errorf("%s.%s (yaml %q) is not in %s", typ.Name(), name, name, examplePath)
			}
		}
	}

	lines := strings.Split(string(data), "\n")
	documented := regexp.MustCompile(`^(syncs\[0\]\.|api\.)?[a-z_]+$`)
	var paths []string
	for path := range c.src.m {
		if documented.MatchString(path) {
			paths = append(paths, path)
		}
	}
	sort.Strings(paths)
	for _, path := range paths {
		line := c.src.m[path].Line
		own := lines[line-1]
		above := strings.TrimSpace(lines[line-2])
		if !strings.Contains(own, "#") && !strings.HasPrefix(above, "#") && !strings.HasPrefix(above, "- #") {
			t.Errorf("%s (line %d) has no comment", path, line)
		}
	}
}

func TestLocalConfigIsValid(t *testing.T) {
	c, err := Load(localPath)
	if err != nil {
		t.Fatal(err)
	}
	want, err := filepath.Abs("../../examples/site")
	if err != nil {
		t.Fatal(err)
	}
	if c.Syncs[0].Dir != want {
		t.Errorf("dir = %q, want %q (relative to configs/)", c.Syncs[0].Dir, want)
	}
	if !strings.HasPrefix(c.API.BaseURL, "http://127.0.0.1:") {
		t.Errorf("base_url %q is not the local emulator", c.API.BaseURL)
	}
}
