package watcher

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// TestFingerprint: every field the sink acts on changes a state's
// fingerprint, so an event that changes any of them is emitted; the stamp
// alone (a touch) does not.
func TestFingerprint(t *testing.T) {
	base := desired.State{Key: "p/a", Path: "/r/a", Root: "/r", Rel: "a", File: beneath.Identity{Dev: 1, Ino: 2, Size: 3},
		Hash: "h", Size: 3, Metadata: json.RawMessage(`{"a":1}`), Expiration: desired.Expiration{TTL: time.Hour}}
	tests := []struct {
		name   string
		change func(*desired.State)
		same   bool
	}{
		{"nothing", func(*desired.State) {}, true},
		{"stamp alone", func(s *desired.State) { s.Stamp = desired.Stamp{Mtime: 5} }, true},
		{"key", func(s *desired.State) { s.Key = "p/b" }, false},
		{"path", func(s *desired.State) { s.Path = "/r/b" }, false},
		{"root", func(s *desired.State) { s.Root = "/s" }, false},
		{"rel", func(s *desired.State) { s.Rel = "b" }, false},
		{"inode", func(s *desired.State) { s.File.Ino = 9 }, false},
		{"deleted", func(s *desired.State) { s.Deleted = true }, false},
		{"hash", func(s *desired.State) { s.Hash = "i" }, false},
		{"size", func(s *desired.State) { s.Size = 4 }, false},
		{"metadata", func(s *desired.State) { s.Metadata = json.RawMessage(`{"a":2}`) }, false},
		{"no metadata", func(s *desired.State) { s.Metadata = nil }, false},
		{"ttl", func(s *desired.State) { s.Expiration.TTL = 2 * time.Hour }, false},
		{"at", func(s *desired.State) { s.Expiration.At = time.Unix(2e9, 0) }, false},
		{"held back", func(s *desired.State) { s.Err = errors.New("bad sidecar") }, false},
		// Length-prefixed fields: moving bytes between two is a change.
		{"bytes moved between fields", func(s *desired.State) { s.Key, s.Path = "p/a/r", "/a" }, false},
	}
	f := fingerprintOf(base)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := base
			tc.change(&st)
			if got := fingerprintOf(st) == f; got != tc.same {
				t.Errorf("same fingerprint = %v, want %v", got, tc.same)
			}
		})
	}
}
