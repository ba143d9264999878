package watcher

import (
	"errors"
	"path"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kvsync/kvsync/kvapi"
)

func TestKeyFor(t *testing.T) {
	t.Parallel()
	cases := []struct {
		prefix, rel, want string
		ok                bool
	}{
		{"", "a/b.txt", "a/b.txt", true},
		{"site/", "index.html", "site/index.html", true},
		{"", ".well-known/x", ".well-known/x", true},
		{"", "", "", false},
		{"", ".", "", false},
		{"", "..", "", false},
		{"", "a/../b", "", false},
		{"", "/abs", "", false},
		{"", "a//b", "", false},
		{"", "dir/", "", false},
		{"", "b\xffd", "", false},
		{"", strings.Repeat("x", 512), strings.Repeat("x", 512), true},
		{"", strings.Repeat("x", 513), "", false},
		{"", strings.Repeat("é", 257), "", false}, // 257 runes, 514 bytes
		{"p", strings.Repeat("x", 512), "", false},
	}
	for _, tc := range cases {
		got, err := KeyFor(tc.prefix, tc.rel)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("KeyFor(%q, %.20q) = %.20q, %v; want %.20q ok=%v", tc.prefix, tc.rel, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrKeyInvalid) {
			t.Errorf("error %v does not wrap ErrKeyInvalid", err)
		}
	}
}

// FuzzKeyFor: KeyFor accepts exactly the pairs whose key KV accepts
// (kvapi.ValidateKey) and whose rel is a clean relative path of a file, and
// then the key is prefix+rel, byte for byte.
func FuzzKeyFor(f *testing.F) {
	for _, s := range [][2]string{{"", "a/b"}, {"p/", "x"}, {"", "."}, {"", ".."}, {"", "a/../b"}, {"", "\xff"},
		{"", strings.Repeat("é", 300)}, {"pre", ""}, {".", ""}, {"", "/x"}, {"\xe6", "\x97\xa5"}, {".", "."}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, prefix, rel string) {
		key, err := KeyFor(prefix, rel)
		// A scan yields rel as path.Clean leaves it, never absolute, "." or
		// climbing out; each half must be UTF-8 on its own, since two broken
		// halves can join into a valid key that names neither.
		cleanRel := rel != "" && path.Clean(rel) == rel && !path.IsAbs(rel) && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
		wantOK := cleanRel && utf8.ValidString(prefix) && utf8.ValidString(rel) && kvapi.ValidateKey(prefix+rel) == nil
		if (err == nil) != wantOK {
			t.Fatalf("KeyFor(%q, %q) error %v, want accepted = %v", prefix, rel, err, wantOK)
		}
		if err != nil {
			if !errors.Is(err, ErrKeyInvalid) {
				t.Fatalf("error %v does not wrap ErrKeyInvalid", err)
			}
			return
		}
		if key != prefix+rel {
			t.Fatalf("key %q != prefix+rel", key)
		}
	})
}
