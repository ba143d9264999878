package state

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestReleasePages: after a full pass over the records, the state file's
// pages are resident; ReleasePages drops them from the process, and the
// store reads on as before.
func TestReleasePages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openT(t, path)
	recs := map[string]Record{}
	for i := range 20000 {
		recs[fmt.Sprintf("key/%06d", i)] = Record{Hash: fmt.Sprintf("%064d", i), Size: int64(i)}
	}
	if err := s.PutBatch("a/n", recs); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := s.ForEach("a/n", "", func(string, Record) error { n++; return nil }); err != nil || n != 20000 {
		t.Fatalf("ForEach: %d records, %v", n, err)
	}
	before := mappedRSS(t, path)
	if before < 512 {
		t.Fatalf("the state file's mapping holds %d KiB after reading every record; want it resident to begin with", before)
	}
	if err := s.ReleasePages(); err != nil {
		t.Fatal(err)
	}
	if after := mappedRSS(t, path); after > before/8 {
		t.Fatalf("resident KiB of the mapping: %d before, %d after ReleasePages", before, after)
	}
	r, ok, err := s.Get("a/n", "key/012345")
	if err != nil || !ok || r.Size != 12345 {
		t.Fatalf("Get after ReleasePages: %+v %v %v", r, ok, err)
	}
}

// mappedRSS sums the resident KiB of this process's mappings of path.
func mappedRSS(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	ino := strconv.FormatUint(fi.Sys().(*syscall.Stat_t).Ino, 10)
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[4] == ino
			continue
		}
		if in && len(fields) >= 2 && fields[0] == "Rss:" {
			kb, _ := strconv.Atoi(fields[1])
			total += kb
		}
	}
	return total
}

// Opening a store reads every record (validate), and leaves none of its
// pages resident: a large store's open does not make a sync's peak RSS.
func TestOpenLeavesNoPagesResident(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openT(t, path)
	recs := map[string]Record{}
	for i := range 20000 {
		recs[fmt.Sprintf("key/%06d", i)] = Record{Hash: fmt.Sprintf("%064d", i), Size: int64(i)}
	}
	if err := s.PutBatch("a/n", recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path)
	if kib := mappedRSS(t, path); kib > 256 {
		t.Fatalf("the state file's mapping holds %d KiB after Open; want its pages dropped", kib)
	}
	if r, ok, err := s.Get("a/n", "key/004321"); err != nil || !ok || r.Size != 4321 {
		t.Fatalf("Get after Open: %+v %v %v", r, ok, err)
	}
}
