package emulator

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// populate writes through HTTP: puts with metadata and TTL, a bulk, deletes,
// a namespace create and rename.
func populate(t *testing.T, h *harness) {
	t.Helper()
	for _, r := range []response{
		h.do("PUT", valuesURL(h, "a")+"?expiration_ttl=600", mustForm(t, "value", "alpha", "metadata", `{"x":1}`), "Content-Type", formCT),
		h.do("PUT", valuesURL(h, "b"), bytes.Repeat([]byte{0xff, 0}, 1<<19)),
		h.do("PUT", h.nsURL("/bulk"), []byte(`[{"key":"c","value":"gamma"},{"key":"d","value":"delta"},{"key":"dir/e","value":"ZQ==","base64":true}]`)),
		h.do("DELETE", valuesURL(h, "d"), nil),
		h.do("PUT", valuesURL(h, "b"), []byte("beta")),
	} {
		if r.status != 200 {
			t.Fatalf("populate: %d %s", r.status, r.body)
		}
	}
}

func reopen(t *testing.T, dir string, clock *fakeClock) *Emulator {
	t.Helper()
	e, err := New(Options{DataDir: dir, Now: clock.Now})
	if err != nil {
		t.Fatalf("reopen %s: %v", dir, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func equalSnapshots(t *testing.T, got, want map[string]Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d keys, want %d", len(got), len(want))
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok || !bytes.Equal(g.Value, w.Value) || string(g.Metadata) != string(w.Metadata) || g.Expiration != w.Expiration {
			t.Errorf("key %q: got %d bytes %s exp %d (present %v), want %d bytes %s exp %d",
				k, len(g.Value), g.Metadata, g.Expiration, ok, len(w.Value), w.Metadata, w.Expiration)
		}
	}
}

func TestPersistenceSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, Options{DataDir: dir})
	populate(t, h)
	base := h.srv.URL + PathPrefix + "/accounts/" + testAccount + "/storage/kv/namespaces"
	r := h.do("POST", base, []byte(`{"title":"named"}`))
	var ns struct{ ID string }
	json.Unmarshal(r.env.Result, &ns)
	h.do("PUT", base+"/"+ns.ID+"/values/k", []byte("in named"))
	h.do("PUT", base+"/"+ns.ID, []byte(`{"title":"renamed"}`))
	h.do("PUT", base+"/gone/values/k", []byte("v"))
	h.do("DELETE", base+"/gone", nil)
	want := h.e.Snapshot(testAccount, testNS)
	if string(want["b"].Value) != "beta" || want["d"].Value != nil || string(want["dir/e"].Value) != "e" {
		t.Fatalf("live state before the crash: %v", want)
	}

	// No Close: as if the process was killed.
	e2 := reopen(t, dir, h.clock)
	equalSnapshots(t, e2.Snapshot(testAccount, testNS), want)
	if got := string(e2.Snapshot(testAccount, ns.ID)["k"].Value); got != "in named" {
		t.Errorf("second namespace: %q", got)
	}
	info, ok := e2.store.namespace(nsRef{testAccount, ns.ID})
	if !ok || info.Title != "renamed" {
		t.Errorf("namespace after restart: %+v %v", info, ok)
	}
	if _, ok := e2.store.namespace(nsRef{testAccount, "gone"}); ok {
		t.Error("deleted namespace came back")
	}
	// TTLs are absolute: the key expires at the same moment after a restart.
	h.clock.Advance(600 * time.Second)
	if _, ok := e2.Snapshot(testAccount, testNS)["a"]; ok {
		t.Error("key a outlived its expiration after restart")
	}
}

func TestPersistenceDamagedFile(t *testing.T) {
	cases := []struct {
		name     string
		damage   func(t *testing.T, path string, sizes []int64)
		wantKeys []string
	}{
		{"torn last record", func(t *testing.T, path string, sizes []int64) {
			os.Truncate(path, sizes[2]-3)
		}, []string{"k0", "k1"}},
		{"half a header at the tail", func(t *testing.T, path string, sizes []int64) {
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte{0x10, 0})
			f.Close()
		}, []string{"k0", "k1", "k2"}},
		{"garbage appended", func(t *testing.T, path string, sizes []int64) {
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 100))
			f.Close()
		}, []string{"k0", "k1", "k2"}},
		{"flipped byte in the middle record", func(t *testing.T, path string, sizes []int64) {
			b, _ := os.ReadFile(path)
			b[sizes[1]-2] ^= 0xff
			os.WriteFile(path, b, 0o600)
		}, []string{"k0"}},
		{"not a data file", func(t *testing.T, path string, sizes []int64) {
			os.WriteFile(path, []byte("hello, I am a text file\n"), 0o600)
		}, nil},
		{"empty file", func(t *testing.T, path string, sizes []int64) {
			os.WriteFile(path, nil, 0o600)
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clock := newFakeClock()
			e, err := New(Options{DataDir: dir, Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, walName)
			var sizes []int64
			for i := range 3 {
				if err := e.Seed(testAccount, testNS, "k"+string(rune('0'+i)), Entry{Value: []byte(strings.Repeat("v", 100))}); err != nil {
					t.Fatal(err)
				}
				st, _ := os.Stat(path)
				sizes = append(sizes, st.Size())
			}
			e.Close()
			tc.damage(t, path, sizes)

			e2 := reopen(t, dir, clock)
			snap := e2.Snapshot(testAccount, testNS)
			if len(snap) != len(tc.wantKeys) {
				t.Fatalf("kept %d keys, want %v", len(snap), tc.wantKeys)
			}
			for _, k := range tc.wantKeys {
				if _, ok := snap[k]; !ok {
					t.Errorf("lost %s", k)
				}
			}
			// It keeps working, and what it writes now survives another restart.
			if err := e2.Seed(testAccount, testNS, "after", Entry{Value: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			e3 := reopen(t, dir, clock)
			if len(e3.Snapshot(testAccount, testNS)) != len(tc.wantKeys)+1 {
				t.Errorf("after recovery and restart: %v", e3.Snapshot(testAccount, testNS))
			}
			aside, _ := filepath.Glob(filepath.Join(dir, walName+".corrupt-*"))
			if damagedTail := tc.name != "empty file"; damagedTail != (len(aside) == 1) {
				t.Errorf("set-aside files: %v", aside)
			}
		})
	}
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, Options{DataDir: dir})
	h.e.store.log.compactMinGarbage = 64 << 10
	path := filepath.Join(dir, walName)
	val := bytes.Repeat([]byte("x"), 32<<10)
	h.do("PUT", valuesURL(h, "ttl")+"?expiration_ttl=60", []byte("short"))
	h.clock.Advance(2 * time.Minute)
	var maxSize int64
	for i := range 40 {
		if r := h.do("PUT", valuesURL(h, "hot"), append(val, byte(i))); r.status != 200 {
			t.Fatal(r.status)
		}
		h.do("PUT", valuesURL(h, "cold"+string(rune('a'+i%3))), []byte{byte(i)})
		st, _ := os.Stat(path)
		maxSize = max(maxSize, st.Size())
	}
	// 40 writes of 32 KiB would be 1.3 MB without compaction.
	if maxSize > 400<<10 {
		t.Errorf("log grew to %d bytes; compaction did not run", maxSize)
	}
	want := h.e.Snapshot(testAccount, testNS)
	if _, ok := want["ttl"]; ok || len(want) != 4 || want["hot"].Value[len(val)] != 39 {
		t.Fatalf("state has %d keys", len(want))
	}
	if r := h.do("GET", valuesURL(h, "hot"), nil); !bytes.Equal(r.body, append(val, 39)) {
		t.Error("read after compaction returned other bytes")
	}
	e2 := reopen(t, dir, h.clock)
	equalSnapshots(t, e2.Snapshot(testAccount, testNS), want)
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "*.compact")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}
