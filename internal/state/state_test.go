package state

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kvsync/kvsync/internal/desired"
)

// helperEnv makes the test binary act as a second kvsync process: it writes
// records, reports "ready" and then waits to be killed without closing.
const helperEnv = "KVSYNC_STATE_TEST_HELPER"

// unreadableEnv makes the test binary open the store it names and report
// how that went, as the unprivileged user a root test runs it as.
const unreadableEnv = "KVSYNC_STATE_TEST_UNREADABLE"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		runHelper(path)
		return
	}
	if path := os.Getenv(unreadableEnv); path != "" {
		if _, err := Open(path, Options{}); err != nil {
			fmt.Println("open failed:", err)
			return
		}
		fmt.Println("opened")
		return
	}
	os.Exit(m.Run())
}

func runHelper(path string) {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	recs := map[string]Record{}
	for i := range 100 {
		recs[fmt.Sprintf("k%03d", i)] = Record{Hash: fmt.Sprintf("%064x", i), Size: int64(i)}
	}
	if err := s.PutBatch("acct/ns", recs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("ready")
	// Hold the lock until killed. A bare select{} would be reported as a
	// deadlock and end the process (releasing the lock) when no other
	// goroutine exists; a sleep keeps a timer alive.
	for {
		time.Sleep(time.Hour)
	}
}

var fixedNow = time.Unix(1_700_000_000, 123456789)

func openT(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{Now: func() time.Time { return fixedNow }})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func sampleRecord(i int) Record {
	return Record{
		Hash:          fmt.Sprintf("%064x", i),
		Size:          int64(i * 10),
		Metadata:      json.RawMessage(`{"i":` + fmt.Sprint(i) + `}`),
		ExpirationTTL: int64(i % 2 * 3600),
		ExpirationAt:  int64(i % 3 * 1_800_000_000),
		Written:       time.Unix(1_700_000_000+int64(i), 0),
	}
}

func equalRecord(a, b Record) bool {
	return a.Hash == b.Hash && a.Size == b.Size && bytes.Equal(a.Metadata, b.Metadata) &&
		a.ExpirationTTL == b.ExpirationTTL && a.ExpirationAt == b.ExpirationAt && a.Written.Equal(b.Written) &&
		a.Pending == b.Pending && a.Digest == b.Digest && a.Stamp == b.Stamp
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.db")
	s := openT(t, path)
	defer s.Close()
	if !s.Fresh() {
		t.Error("Fresh() = false for a new file")
	}
	cases := []struct {
		name string
		in   Record
		want Record
	}{
		{"full", sampleRecord(7), sampleRecord(7)},
		{"no metadata", Record{Hash: "ab", Size: 1, Written: fixedNow}, Record{Hash: "ab", Size: 1, Written: fixedNow}},
		{"metadata compacted, html kept", Record{Hash: "cd", Metadata: json.RawMessage("{ \"a\" : \"<b>&</b>\",\n \"n\": [1, 2] }")},
			Record{Hash: "cd", Metadata: json.RawMessage(`{"a":"<b>&</b>","n":[1,2]}`), Written: fixedNow}},
		{"zero written stamped with now", Record{Hash: "ef", Size: 0}, Record{Hash: "ef", Written: fixedNow}},
		{"pending over a written record", func() Record { r := sampleRecord(3); r.Pending = true; return r }(),
			func() Record { r := sampleRecord(3); r.Pending = true; return r }()},
		{"pending new key", Record{Pending: true}, Record{Pending: true, Written: fixedNow}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.PutBatch("a/n", map[string]Record{tc.name: tc.in}); err != nil {
				t.Fatal(err)
			}
			got, ok, err := s.Get("a/n", tc.name)
			if err != nil || !ok {
				t.Fatalf("Get = ok %v, err %v", ok, err)
			}
			if !equalRecord(got, tc.want) {
				t.Errorf("Get = %+v (metadata %s), want %+v (metadata %s)", got, got.Metadata, tc.want, tc.want.Metadata)
			}
		})
	}
	if _, ok, err := s.Get("a/n", "missing"); ok || err != nil {
		t.Errorf("Get(missing) = ok %v, err %v", ok, err)
	}
	if _, ok, err := s.Get("no/scope", "x"); ok || err != nil {
		t.Errorf("Get(missing scope) = ok %v, err %v", ok, err)
	}
	err := s.PutBatch("a/n", map[string]Record{"bad": {Hash: "x", Metadata: json.RawMessage(`{"a":`)}})
	if err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Errorf("PutBatch with invalid metadata = %v, want an error naming the key", err)
	}
	if _, ok, _ := s.Get("a/n", "bad"); ok {
		t.Error("a refused batch was partly written")
	}

	for _, p := range []string{path, filepath.Dir(path)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

// A store written before Record.Pending existed must read as clean records,
// and a clean record must still be stored in that older form, so a
// downgrade reads it too; Pending survives a reopen and ForEach.
func TestPendingEncodingCompatible(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := `{"h":"abc","s":3,"m":{"a":1},"t":3600,"w":1700000000000000000}`
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("a/n"))
		if err != nil {
			return err
		}
		return b.Put([]byte("old"), []byte(old))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openT(t, path)
	got, ok, err := s.Get("a/n", "old")
	want := Record{Hash: "abc", Size: 3, Metadata: json.RawMessage(`{"a":1}`), ExpirationTTL: 3600, Written: time.Unix(1_700_000_000, 0)}
	if err != nil || !ok || !equalRecord(got, want) {
		t.Fatalf("old record = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	if v, err := encode(got); err != nil || string(v) != old {
		t.Errorf("clean record encodes as %s (%v), want the old form %s", v, err, old)
	}
	pending := got
	pending.Pending = true
	if v, err := encode(pending); err != nil || !strings.HasSuffix(string(v), `,"p":true}`) {
		t.Errorf("pending record encodes as %s (%v)", v, err)
	}
	if err := s.PutBatch("a/n", map[string]Record{"old": pending, "new": {Pending: true}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openT(t, path)
	defer s.Close()
	seen := map[string]Record{}
	if err := s.ForEach("a/n", "", func(k string, r Record) error { seen[k] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	if r := seen["old"]; !equalRecord(r, pending) {
		t.Errorf("pending record after reopen = %+v, want %+v", r, pending)
	}
	if r := seen["new"]; !r.Pending || r.Hash != "" || !r.Written.Equal(fixedNow) {
		t.Errorf("pending new key after reopen = %+v", r)
	}
	// Clearing the mark is an ordinary PutBatch of the clean record.
	if err := s.PutBatch("a/n", map[string]Record{"old": want}); err != nil {
		t.Fatal(err)
	}
	if r, _, _ := s.Get("a/n", "old"); r.Pending {
		t.Error("a clean record written over a pending one is still pending")
	}
}

func TestBatchScopesAndPrefix(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	recs := map[string]Record{}
	for _, k := range []string{"a/1", "a/2", "a/10", "b/1", "ab", "z"} {
		recs[k] = Record{Hash: "h-" + k}
	}
	if err := s.PutBatch("acct/ns1", recs); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBatch("acct/ns2", map[string]Record{"a/1": {Hash: "other"}}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		scope string
		want  int
	}{{"acct/ns1", 6}, {"acct/ns2", 1}, {"acct/ns3", 0}} {
		if n, err := s.Len(tc.scope); err != nil || n != tc.want {
			t.Errorf("Len(%s) = %d, %v; want %d", tc.scope, n, err, tc.want)
		}
	}
	if r, _, _ := s.Get("acct/ns2", "a/1"); r.Hash != "other" {
		t.Errorf("scope ns2 sees %q, want its own record", r.Hash)
	}

	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a/1", "a/10", "a/2", "ab", "b/1", "z"}},
		{"a/", []string{"a/1", "a/10", "a/2"}},
		{"a", []string{"a/1", "a/10", "a/2", "ab"}},
		{"a/1", []string{"a/1", "a/10"}},
		{"c", nil},
		{"zz", nil},
	} {
		t.Run("prefix "+tc.prefix, func(t *testing.T) {
			var got []string
			err := s.ForEach("acct/ns1", tc.prefix, func(k string, r Record) error {
				if r.Hash != "h-"+k {
					t.Errorf("key %s has hash %s", k, r.Hash)
				}
				got = append(got, k)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("ForEach(%q) = %v, want %v", tc.prefix, got, tc.want)
			}
		})
	}

	stop := errors.New("stop")
	calls := 0
	if err := s.ForEach("acct/ns1", "", func(string, Record) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ForEach stop: err %v after %d calls", err, calls)
	}

	if err := s.DeleteBatch("acct/ns1", []string{"a/1", "a/2", "never-there"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteBatch("acct/none", []string{"x"}); err != nil {
		t.Errorf("DeleteBatch on an unknown scope: %v", err)
	}
	if n, _ := s.Len("acct/ns1"); n != 4 {
		t.Errorf("Len after delete = %d, want 4", n)
	}
	if _, ok, _ := s.Get("acct/ns2", "a/1"); !ok {
		t.Error("deleting in ns1 removed ns2's key")
	}
}

func TestReopenAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openT(t, path)
	if err := s.PutBatch("a/n", map[string]Record{"k": sampleRecord(3)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path)
	defer s.Close()
	if s.Fresh() {
		t.Error("Fresh() = true for an existing good file")
	}
	if r, ok, err := s.Get("a/n", "k"); err != nil || !ok || !equalRecord(r, sampleRecord(3)) {
		t.Errorf("after reopen Get = %+v, %v, %v", r, ok, err)
	}
	if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) != 0 {
		t.Errorf("a good file was moved aside: %v", m)
	}
}

// TestSurvivesKill writes from a child process, kills it with SIGKILL while
// the store is open, then checks the parent sees the data. While the child
// lives, the parent must get ErrInUse rather than hang or call it corrupt.
func TestSurvivesKill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}

	_, err = Open(path, Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), path) ||
		!strings.Contains(err.Error(), "in use by another kvsync process") {
		t.Fatalf("Open while the helper holds the lock = %v, want ErrInUse naming %s", err, path)
	}
	if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) != 0 {
		t.Fatalf("a locked file was treated as corrupt: %v", m)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	s := openT(t, path)
	defer s.Close()
	if s.Fresh() {
		t.Error("Fresh() = true after the writer was killed")
	}
	if n, err := s.Len("acct/ns"); err != nil || n != 100 {
		t.Errorf("Len = %d, %v; want the 100 committed records", n, err)
	}
	if r, ok, _ := s.Get("acct/ns", "k042"); !ok || r.Size != 42 {
		t.Errorf("Get(k042) = %+v, %v", r, ok)
	}
}

func TestLockTimeoutInProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openT(t, path)
	defer s.Close()
	// flock locks belong to the open file description, so a second open in
	// the same process conflicts just as another process would.
	_, err := Open(path, Options{Timeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open = %v, want ErrInUse", err)
	}
	if err := s.PutBatch("a/n", map[string]Record{"k": {Hash: "h"}}); err != nil {
		t.Errorf("the first store stopped working: %v", err)
	}
}

// goodFile returns the bytes of a valid store holding a few records.
func goodFile(t *testing.T) []byte {
	b, _ := goodFileWithSize(t)
	return b
}

// goodFileWithSize also returns the size bbolt's meta page claims, which can
// be less than the file's, since the file grows ahead of use.
func goodFileWithSize(t *testing.T) ([]byte, int64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "good.db")
	s := openT(t, path)
	recs := map[string]Record{}
	for i := range 2000 {
		recs[fmt.Sprintf("key/%05d", i)] = sampleRecord(i)
	}
	if err := s.PutBatch("a/n", recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var used int64
	_ = db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	db.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, used
}

func TestCorruptFiles(t *testing.T) {
	good, used := goodFileWithSize(t)
	pageSize := os.Getpagesize()
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(i*7919 + i>>8)
	}
	// A file whose meta pages are intact but whose data pages are zeroed.
	zeroedData := append([]byte(nil), good...)
	clear(zeroedData[2*pageSize:])
	// A valid bbolt file whose values are not records.
	foreign := func() []byte {
		path := filepath.Join(t.TempDir(), "foreign.db")
		s := openT(t, path)
		_ = s.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("a/n"))
			if err != nil {
				return err
			}
			return b.Put([]byte("k"), []byte("not json"))
		})
		s.Close()
		b, _ := os.ReadFile(path)
		return b
	}()

	cases := []struct {
		name    string
		content []byte
		// exact: bbolt cannot even start on it, so the file kept aside
		// must be byte for byte the original. A file bbolt could open may
		// have had its freelist rewritten before validation failed.
		exact bool
	}{
		{"zero length", nil, true},
		{"garbage", garbage, true},
		{"short garbage", []byte("hello, not a database\n"), true},
		{"all NULs", make([]byte, 32<<10), true},
		{"truncated to one page", good[:pageSize], true},
		// Half of the pages in use: the file grows ahead of use, so half of
		// its length may still hold every page.
		{"truncated to half", good[:used/2], false},
		{"last used page cut off", good[:used-int64(pageSize)], false},
		{"data pages zeroed", zeroedData, false},
		{"records not decodable", foreign, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.db")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			var logBuf bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logBuf, nil))
			s, err := Open(path, Options{Logger: logger, Now: func() time.Time { return fixedNow }})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			if !s.Fresh() {
				t.Error("Fresh() = false for a corrupt file")
			}
			if n, err := s.Len("a/n"); err != nil || n != 0 {
				t.Errorf("new store Len = %d, %v", n, err)
			}
			aside := fmt.Sprintf("%s.corrupt-%d", path, fixedNow.Unix())
			kept, err := os.ReadFile(aside)
			if err != nil {
				t.Fatalf("corrupt file not kept at %s: %v", aside, err)
			}
			if tc.exact && !bytes.Equal(kept, tc.content) {
				t.Errorf("moved-aside file differs from the original (%d vs %d bytes)", len(kept), len(tc.content))
			}
			if log := logBuf.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, path) {
				t.Errorf("no warning naming the file; log: %s", log)
			}
			if err := s.PutBatch("a/n", map[string]Record{"k": {Hash: "h"}}); err != nil {
				t.Errorf("new store not writable: %v", err)
			}
		})
	}
}

func TestCorruptAsideNameCollision(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	now := func() time.Time { return fixedNow }
	for i := range 2 {
		if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Options{Now: now})
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		s.Close()
	}
	m, _ := filepath.Glob(path + ".corrupt-*")
	if len(m) != 2 {
		t.Errorf("moved-aside files = %v, want two distinct ones", m)
	}
}

func TestOpenErrorsThatAreNotCorruption(t *testing.T) {
	dir := t.TempDir()
	t.Run("path is a directory", func(t *testing.T) {
		p := filepath.Join(dir, "isdir")
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(p, Options{}); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("Open(dir) = %v, want an error naming it", err)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("directory was moved: %v", err)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		// The directory is the opener's own, so moving the file aside is
		// possible: only the code's judgement keeps it in place.
		d := filepath.Join(dir, "noperm")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d, "state.db")
		if err := os.WriteFile(p, goodFile(t), 0o000); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			// Root reads any file whatever its mode: open it as nobody.
			out := openAsNobody(t, d, p)
			if !strings.Contains(out, "open failed: state file "+p) || !strings.Contains(out, "permission denied") {
				t.Fatalf("Open as nobody of an unreadable file: %s", out)
			}
		} else if _, err := Open(p, Options{}); err == nil {
			t.Fatal("Open of an unreadable file succeeded")
		}
		if m, _ := filepath.Glob(p + ".corrupt-*"); len(m) != 0 {
			t.Errorf("permission error treated as corruption: %v", m)
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("the unreadable file is no longer there whole: %v", err)
		}
	})
}

func BenchmarkPutBatch10k(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "state.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	recs := make(map[string]Record, 10000)
	for i := range 10000 {
		recs[fmt.Sprintf("site/assets/%06d.html", i)] = sampleRecord(i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.PutBatch("acct/ns", recs); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDamagedPagesNeverCrash overwrites runs of bytes at seeded random
// places of a good file. Open must always yield a usable store: either the
// damage was found (the file moved aside, a fresh store) or what passed
// validation reads without error, takes a write and keeps it across a
// reopen. Nothing may panic or fault.
func TestDamagedPagesNeverCrash(t *testing.T) {
	good := goodFile(t)
	rng := rand.New(rand.NewPCG(1, 2))
	dir := t.TempDir()
	fresh := 0
	for i := range 40 {
		b := append([]byte(nil), good...)
		off := rng.IntN(len(b))
		n := min(1+rng.IntN(64), len(b)-off)
		for j := range n {
			b[off+j] = byte(rng.Uint32())
		}
		path := filepath.Join(dir, fmt.Sprintf("s%02d.db", i))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("variant %d (offset %d): Open: %v", i, off, err)
		}
		if s.Fresh() {
			fresh++
		}
		if _, _, err := s.Get("a/n", "key/00001"); err != nil {
			t.Errorf("variant %d (offset %d): Get on a store that passed validation: %v", i, off, err)
		}
		if err := s.ForEach("a/n", "", func(string, Record) error { return nil }); err != nil {
			t.Errorf("variant %d (offset %d): ForEach on a store that passed validation: %v", i, off, err)
		}
		want := Record{Hash: "h", Size: int64(i)}
		if err := s.PutBatch("a/n", map[string]Record{"new": want}); err != nil {
			t.Errorf("variant %d (offset %d): PutBatch on a store that passed validation: %v", i, off, err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("variant %d (offset %d): Close: %v", i, off, err)
		}
		s, err = Open(path, Options{})
		if err != nil {
			t.Fatalf("variant %d (offset %d): reopening: %v", i, off, err)
		}
		if got, ok, err := s.Get("a/n", "new"); err != nil || !ok || got.Hash != want.Hash || got.Size != want.Size || s.Fresh() {
			t.Errorf("variant %d (offset %d): after reopening, the write reads %+v, %v, %v (fresh %v)", i, off, got, ok, err, s.Fresh())
		}
		s.Close()
	}
	// The seed is fixed: both outcomes must occur, or the test no longer
	// exercises what it claims to.
	if fresh == 0 || fresh == 40 {
		t.Errorf("%d of 40 damaged variants were detected as corrupt; want some of each kind", fresh)
	}
}

// BenchmarkOpenValidate100k measures startup: Open reads and decodes every
// record of a 100,000-key store to detect damage early.
func BenchmarkOpenValidate100k(b *testing.B) {
	path := filepath.Join(b.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	for batch := range 10 {
		recs := make(map[string]Record, 10000)
		for i := range 10000 {
			recs[fmt.Sprintf("site/%d/%06d.html", batch, i)] = sampleRecord(i)
		}
		if err := s.PutBatch("acct/ns", recs); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if s.Fresh() {
			b.Fatal("a good store was taken for corrupt")
		}
		s.Close()
	}
}

// BenchmarkPutBatch1Pending is the cost the write-ahead intent adds to one
// single-key request: a one-record transaction (one fsync) marking the key
// pending, in a store of 10,000 keys.
func BenchmarkPutBatch1Pending(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "state.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	recs := make(map[string]Record, 10000)
	for i := range 10000 {
		recs[fmt.Sprintf("site/assets/%06d.html", i)] = sampleRecord(i)
	}
	if err := s.PutBatch("acct/ns", recs); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := sampleRecord(i % 10000)
		r.Pending = true
		if err := s.PutBatch("acct/ns", map[string]Record{fmt.Sprintf("site/assets/%06d.html", i%10000): r}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkGet(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "state.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	recs := make(map[string]Record, 10000)
	for i := range 10000 {
		recs[fmt.Sprintf("site/assets/%06d.html", i)] = sampleRecord(i)
	}
	if err := s.PutBatch("acct/ns", recs); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, ok, err := s.Get("acct/ns", fmt.Sprintf("site/assets/%06d.html", i%10000)); !ok || err != nil {
			b.Fatal(ok, err)
		}
		i++
	}
}

// TestLockedDamagedFileIsLeftAlone: a file another process holds is never
// judged or moved, even when its content looks empty or broken.
func TestLockedDamagedFileIsLeftAlone(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content []byte
	}{{"zero length", nil}, {"garbage", []byte("garbage garbage garbage")}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			holder, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			if err := lockFile(holder, 0); err != nil {
				t.Fatal(err)
			}
			_, err = Open(path, Options{Timeout: 50 * time.Millisecond})
			if !errors.Is(err, ErrInUse) {
				t.Errorf("Open = %v, want ErrInUse", err)
			}
			if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) != 0 {
				t.Errorf("a locked file was moved aside: %v", m)
			}
			if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, tc.content) {
				t.Errorf("locked file changed: %q, %v", b, err)
			}
		})
	}
}

// TestAppendEncodedMatchesEncode: the direct encoder must store exactly the
// bytes encoding/json does, or fail where it fails.
func TestAppendEncodedMatchesEncode(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Record
	}{
		{"zero", Record{}},
		{"sample", sampleRecord(7)},
		{"pending mark", Record{Pending: true, Written: time.Unix(1_700_000_000, 5)}},
		{"pending with record", func() Record { r := sampleRecord(3); r.Pending = true; return r }()},
		{"written at epoch", Record{Hash: "h", Written: time.Unix(0, 0)}},
		{"negative fields", Record{Hash: "h", Size: -1, ExpirationTTL: -2, ExpirationAt: -3, Written: time.Unix(-5, 0)}},
		{"metadata needing compaction", Record{Hash: "h", Metadata: json.RawMessage(" { \"a\" : [1, 2 ,\n3] , \"b\":\"x y\" } ")}},
		{"metadata with html and unicode", Record{Hash: "h", Metadata: json.RawMessage(`{"a":"<b>&amp;</b>","é":"\u2028 ☃"}`)}},
		{"invalid metadata", Record{Hash: "h", Metadata: json.RawMessage(`{"a":`)}},
		{"whitespace metadata", Record{Hash: "h", Metadata: json.RawMessage("  ")}},
		{"hash with quote", Record{Hash: `a"b\c`}},
		{"hash with control and html", Record{Hash: "a\n\x01<&>"}},
		{"hash non-ASCII", Record{Hash: "é\u2028\xff"}},
		{"stamped", Record{Hash: "h", Size: 5, Stamp: desired.Stamp{Dev: 2049, Ino: 1 << 40, Size: 5, Mtime: 1_700_000_000_123456789, Ctime: -1}, Pending: true}},
		{"listed digest", Record{Digest: [16]byte{1, 2, 3, 250, 255}, ExpirationAt: 1_900_000_000, Written: time.Unix(1_700_000_000, 0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, werr := encode(tc.r)
			prefix := []byte("prior")
			got, gerr := appendEncoded(append([]byte(nil), prefix...), tc.r)
			if (werr != nil) != (gerr != nil) {
				t.Fatalf("errors differ: encode %v, appendEncoded %v", werr, gerr)
			}
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("buffer prefix lost: %q", got)
			}
			if werr != nil {
				return
			}
			if g := got[len(prefix):]; !bytes.Equal(g, want) {
				t.Errorf("appendEncoded = %s, encode = %s", g, want)
			}
			back, err := decode(got[len(prefix):])
			if err != nil {
				t.Fatal(err)
			}
			w, _ := decode(want)
			if !equalRecord(back, w) || back.Pending != w.Pending {
				t.Errorf("decoded %+v, want %+v", back, w)
			}
			if plain, ok := decodePlain(want); ok {
				general, err := decodeJSON(want)
				if err != nil || !equalRecord(plain, general) {
					t.Errorf("decodePlain %+v, encoding/json %+v (%v)", plain, general, err)
				}
			}
			if !equalRecord(back, tc.r) && (tc.r.Digest != ([16]byte{}) || !tc.r.Stamp.IsZero()) {
				t.Errorf("decoded %+v, want the record stored %+v", back, tc.r)
			}
		})
	}
}

// BenchmarkPutBatchFresh10k is a first publish's store traffic: 10,000 keys
// new to their scope are marked pending, then recorded.
func BenchmarkPutBatchFresh10k(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "state.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	marks := make(map[string]Record, 10000)
	recs := make(map[string]Record, 10000)
	for i := range 10000 {
		k := fmt.Sprintf("site/d%02d/e%02d/f%06d.txt", i%16, (i/16)%32, i)
		marks[k] = Record{Pending: true, Written: time.Unix(1_700_000_000, 0)}
		recs[k] = sampleRecord(i)
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		scope := fmt.Sprintf("acct/ns%d", n)
		n++
		if err := s.PutBatch(scope, marks); err != nil {
			b.Fatal(err)
		}
		if err := s.PutBatch(scope, recs); err != nil {
			b.Fatal(err)
		}
	}
}

// GetMany returns exactly the records Get does, for keys with and without
// one, in a scope that exists and in one that does not.
func TestGetManyMatchesGet(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	recs := map[string]Record{"k/1": sampleRecord(1), "k/2": {Pending: true, Written: fixedNow}, "k/3": sampleRecord(3)}
	if err := s.PutBatch("a/n", recs); err != nil {
		t.Fatal(err)
	}
	keys := []string{"k/3", "missing", "k/1", "k/2", "k/1"}
	for _, scope := range []string{"a/n", "no/scope"} {
		got, err := s.GetMany(scope, keys)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			r, ok, err := s.Get(scope, k)
			if err != nil {
				t.Fatal(err)
			}
			g, gok := got[k]
			if ok != gok || ok && (!equalRecord(g, r) || g.Pending != r.Pending) {
				t.Errorf("scope %s key %s: GetMany %+v %v, Get %+v %v", scope, k, g, gok, r, ok)
			}
		}
		if scope == "a/n" && len(got) != 3 || scope == "no/scope" && len(got) != 0 {
			t.Errorf("scope %s: GetMany returned %d records: %v", scope, len(got), got)
		}
	}
}

// BenchmarkFirstPublish2x5k is the store traffic of `kvsync sync` on a first
// publish of 10,000 files: a new store file, then per bulk request of 5,000
// pairs the intent marks and, after the reply, the records (the engine's
// two jobs do this concurrently). The file grows from nothing to its full
// size within the op.
func BenchmarkFirstPublish2x5k(b *testing.B) {
	var marks, recs [2]map[string]Record
	for j := range 2 {
		marks[j], recs[j] = make(map[string]Record, 5000), make(map[string]Record, 5000)
		for i := j * 5000; i < (j+1)*5000; i++ {
			k := fmt.Sprintf("site/d%02d/e%02d/f%06d.txt", i/640, i/20%32, i)
			marks[j][k] = Record{Pending: true, Written: time.Unix(1_700_000_000, 0)}
			recs[j][k] = sampleRecord(i)
		}
	}
	dir := b.TempDir()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		path := filepath.Join(dir, fmt.Sprintf("state%d.db", i))
		s, err := Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var wg sync.WaitGroup
		for j := range 2 {
			wg.Go(func() {
				if err := s.PutBatch("acct/ns", marks[j]); err != nil {
					b.Error(err)
				}
				if err := s.PutBatch("acct/ns", recs[j]); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		os.Remove(path)
		b.StartTimer()
	}
}

// The store is mapped large from the start so it is not remapped as it
// grows, yet a small store stays a small file: the file grows by allocSize
// past its need, not by bbolt's default 16 MiB.
func TestSmallStoreStaysSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openT(t, path)
	recs := map[string]Record{}
	for i := range 100 {
		recs[fmt.Sprintf("key/%03d", i)] = sampleRecord(i)
	}
	if err := s.PutBatch("a/n", recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if max := int64(2 * allocSize); fi.Size() > max {
		t.Errorf("a store of 100 records is a file of %d bytes, want at most %d", fi.Size(), max)
	}
	s = openT(t, path)
	defer s.Close()
	if n, err := s.Len("a/n"); err != nil || n != 100 {
		t.Errorf("reopened: %d records, %v", n, err)
	}
}
