package uploader

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSmall(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if b, err := readSmall(file("a", "alpha"), 10); err != nil || string(b) != "alpha" {
		t.Errorf("a: %q, %v", b, err)
	}
	if b, err := readSmall(file("empty", ""), 10); err != nil || len(b) != 0 {
		t.Errorf("empty: %q, %v", b, err)
	}
	big := strings.Repeat("x", 70000) // more than one read on some systems
	if b, err := readSmall(file("big", big), 1<<20); err != nil || string(b) != big {
		t.Errorf("big: %d bytes, %v", len(b), err)
	}
	if _, err := readSmall(file("over", "eleven char"), 10); !errors.Is(err, errGrew) {
		t.Errorf("over the limit: %v, want errGrew", err)
	}
	if _, err := readSmall(filepath.Join(dir, "missing"), 10); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing: %v, want ErrNotExist naming the file", err)
	}
	if _, err := readSmall(dir, 10); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}
