package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/emulator"
)

// capture runs fn with stdout redirected and returns what it printed.
func capture(t *testing.T, fn func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		out <- string(b)
	}()
	ferr := fn()
	os.Stdout = old
	w.Close()
	s := <-out
	if ferr != nil {
		t.Fatalf("%v (output %q)", ferr, s)
	}
	return s
}

func TestGenDeterministicAndCached(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	args := func(d string) []string {
		return []string{"--dir", d, "--files", "40", "--size", "100", "--sidecar-every", "10", "--seed", "7"}
	}
	capture(t, func() error { return cmdGen(args(a)) })
	capture(t, func() error { return cmdGen(args(b)) })
	for i := range 40 {
		rel := filepath.FromSlash(relPath(i))
		x, err := os.ReadFile(filepath.Join(a, rel))
		if err != nil {
			t.Fatal(err)
		}
		y, _ := os.ReadFile(filepath.Join(b, rel))
		if len(x) != 100 || !bytes.Equal(x, y) {
			t.Fatalf("%s: %d bytes, equal across runs: %v", rel, len(x), bytes.Equal(x, y))
		}
		if strings.Trim(string(x), alphabet) != "" {
			t.Fatalf("%s holds bytes outside the alphabet", rel)
		}
		_, err = os.Stat(filepath.Join(a, rel) + sidecarSuffix)
		if hasSidecar := err == nil; hasSidecar != (i%10 == 0) {
			t.Errorf("%s: sidecar present %v", rel, hasSidecar)
		}
	}
	// Different files get different content.
	f0, _ := os.ReadFile(filepath.Join(a, filepath.FromSlash(relPath(0))))
	f1, _ := os.ReadFile(filepath.Join(a, filepath.FromSlash(relPath(1))))
	if bytes.Equal(f0, f1) {
		t.Error("two files have the same content")
	}

	// Same flags: cached, nothing rewritten. Other flags: regenerated.
	marker := filepath.Join(a, "marker")
	os.WriteFile(marker, nil, 0o644)
	if out := capture(t, func() error { return cmdGen(args(a)) }); !strings.Contains(out, "cached") {
		t.Errorf("second gen with the same flags: %q", out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Error("a cached tree was rewritten")
	}
	capture(t, func() error {
		return cmdGen([]string{"--dir", a, "--files", "5", "--size", "10"})
	})
	if _, err := os.Stat(marker); err == nil {
		t.Error("a tree with other flags was not regenerated")
	}
	// --dirs changes the layout and the stamp; the default layout's stamp is
	// the one trees had before the flag existed, so they stay cached.
	capture(t, func() error {
		return cmdGen([]string{"--dir", a, "--files", "5", "--size", "10", "--dirs", "2,3"})
	})
	if _, err := os.Stat(filepath.Join(a, "d01", "e00", "f000001.txt")); err != nil {
		t.Errorf("--dirs 2,3: %v", err)
	}
	if stamp, _ := os.ReadFile(a + ".done"); !strings.HasSuffix(string(stamp), " dirs=2,3") {
		t.Errorf("stamp with --dirs: %q", stamp)
	}
	capture(t, func() error {
		return cmdGen([]string{"--dir", a, "--files", "5", "--size", "10"})
	})
	if stamp, _ := os.ReadFile(a + ".done"); string(stamp) != "benchtool-tree v1 files=5 size=10 seed=1 sidecar-every=0" {
		t.Errorf("stamp of the default layout: %q", stamp)
	}
	if out := capture(t, func() error { return cmdTreeInfo([]string{"--dir", a}) }); out != "TREE_FILES=5\nTREE_BYTES=50\nTREE_SIDECARS=0\n" {
		t.Errorf("treeinfo after regeneration: %q", out)
	}
}

func TestPairsAndFileList(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "t")
	capture(t, func() error {
		return cmdGen([]string{"--dir", tree, "--files", "30", "--size", "16", "--sidecar-every", "10"})
	})
	if out := capture(t, func() error { return cmdTreeInfo([]string{"--dir", tree}) }); out != "TREE_FILES=30\nTREE_BYTES=480\nTREE_SIDECARS=3\n" {
		t.Errorf("treeinfo: %q", out)
	}
	pairsFile := filepath.Join(dir, "pairs.json")
	if err := cmdPairs([]string{"--dir", tree, "--out", pairsFile}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(pairsFile)
	var pairs []struct {
		Key      string          `json:"key"`
		Value    string          `json:"value"`
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(raw, &pairs); err != nil {
		t.Fatalf("pairs JSON: %v", err)
	}
	if len(pairs) != 30 {
		t.Fatalf("%d pairs", len(pairs))
	}
	withMeta := 0
	for i, p := range pairs {
		if i > 0 && pairs[i-1].Key >= p.Key {
			t.Errorf("pairs not sorted: %q then %q", pairs[i-1].Key, p.Key)
		}
		v, err := os.ReadFile(filepath.Join(tree, filepath.FromSlash(p.Key)))
		if err != nil || string(v) != p.Value {
			t.Errorf("pair %q does not hold its file's content (%v)", p.Key, err)
		}
		if p.Metadata != nil {
			withMeta++
			var m map[string]any
			if err := json.Unmarshal(p.Metadata, &m); err != nil || m["tree"] != "t" {
				t.Errorf("pair %q metadata %s", p.Key, p.Metadata)
			}
		}
	}
	if withMeta != 3 {
		t.Errorf("%d pairs with metadata, want 3", withMeta)
	}

	listFile := filepath.Join(dir, "files.tsv")
	if err := cmdFileList([]string{"--dir", tree, "--out", listFile}); err != nil {
		t.Fatal(err)
	}
	list, _ := os.ReadFile(listFile)
	lines := strings.Split(strings.TrimSuffix(string(list), "\n"), "\n")
	if len(lines) != 30 {
		t.Fatalf("%d lines", len(lines))
	}
	want := "d00%2Fe00%2Ff000000.txt\t" + filepath.Join(tree, "d00/e00/f000000.txt") + "\t" + filepath.Join(tree, "d00/e00/f000000.txt.meta.json")
	if lines[0] != want {
		t.Errorf("first line %q, want %q", lines[0], want)
	}
	if !strings.HasSuffix(lines[1], "\t-") {
		t.Errorf("a file without sidecar: %q", lines[1])
	}
}

func TestMeasure(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "m")
	if err := cmdMeasure([]string{"--out", out, "--", "sh", "-c", "exit 0"}); err != nil {
		t.Fatal(err)
	}
	rec, _ := os.ReadFile(out)
	if !strings.Contains(string(rec), "RC=0\n") || !strings.Contains(string(rec), "WALL_S=") || strings.Contains(string(rec), "RSS_KIB=0\n") {
		t.Errorf("record %q", rec)
	}
	err := cmdMeasure([]string{"--out", out, "--", "sh", "-c", "exit 3"})
	if ee, ok := err.(exitError); !ok || int(ee) != 3 {
		t.Errorf("exit status 3 came back as %v", err)
	}
	rec, _ = os.ReadFile(out)
	if !strings.Contains(string(rec), "RC=3\n") {
		t.Errorf("record of a failing command %q", rec)
	}
}

func TestStatsAgainstEmulator(t *testing.T) {
	// The stats endpoint needs the emulator's token, which benchtool reads
	// from the environment, as bench/run.sh passes it.
	const token = "bench-secret"
	t.Setenv("KVSYNC_EMULATOR_TOKEN", token)
	em, err := emulator.New(emulator.Options{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(em)
	defer srv.Close()
	defer em.Close()
	statsURL := srv.URL + emulator.StatsPath
	put := func(method, path, body string) {
		req, _ := http.NewRequest(method, srv.URL+emulator.PathPrefix+"/accounts/acc/storage/kv/namespaces/ns"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	put("PUT", "/values/early", "1")
	before := filepath.Join(t.TempDir(), "before.json")
	capture(t, func() error { return cmdStats([]string{"--url", statsURL, "--save", before}) })
	put("PUT", "/bulk", `[{"key":"a","value":"abc","metadata":{"x":1}},{"key":"b","value":"de"}]`)
	put("GET", "/keys", "")
	got := capture(t, func() error {
		return cmdStats([]string{"--url", statsURL, "--account", "acc", "--namespace", "ns", "--before", before})
	})
	want := "REQUESTS=2\nWRITES=1\nBULK_WRITES=1\nLISTS=1\nR429=0\nKEYS=3\nVALUE_BYTES=6\nMETA_KEYS=1\n"
	if got != want {
		t.Errorf("stats:\n%s\nwant:\n%s", got, want)
	}
}
