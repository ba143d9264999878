package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// keyTally counts, from the requests the emulator receives, which keys were
// written and deleted and how many list requests were made: the emulator
// counts requests, and a bulk request carries many keys.
type keyTally struct {
	mu      sync.Mutex
	writes  map[string]int
	deletes map[string]int
	lists   int
}

// tally starts counting env's requests.
func tally(env *kvEnv) *keyTally {
	k := &keyTally{}
	k.reset()
	env.tapMu.Lock()
	env.tap = k.observe
	env.tapMu.Unlock()
	return k
}

func (k *keyTally) reset() {
	k.mu.Lock()
	k.writes, k.deletes, k.lists = map[string]int{}, map[string]int{}, 0
	k.mu.Unlock()
}

func (k *keyTally) observe(r *http.Request) {
	path := r.URL.EscapedPath()
	_, rest, ok := strings.Cut(path, "/storage/kv/namespaces/")
	if !ok {
		return
	}
	_, op, _ := strings.Cut(rest, "/")
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case op == "keys" && r.Method == http.MethodGet:
		k.lists++
	case strings.HasPrefix(op, "values/"):
		key, _ := url.PathUnescape(strings.TrimPrefix(op, "values/"))
		switch r.Method {
		case http.MethodPut:
			k.writes[key]++
		case http.MethodDelete:
			k.deletes[key]++
		}
	case op == "bulk" && r.Method == http.MethodPut:
		var pairs []struct{ Key string }
		json.Unmarshal(body, &pairs)
		for _, p := range pairs {
			k.writes[p.Key]++
		}
	case op == "bulk/delete" || op == "bulk" && r.Method == http.MethodDelete:
		var keys []string
		json.Unmarshal(body, &keys)
		for _, key := range keys {
			k.deletes[key]++
		}
	}
}

// took returns the keys written and deleted since the last reset, sorted,
// and the list requests.
func (k *keyTally) took() (writes, deletes []string, lists int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for key, n := range k.writes {
		for range n {
			writes = append(writes, key)
		}
	}
	for key, n := range k.deletes {
		for range n {
			deletes = append(deletes, key)
		}
	}
	sort.Strings(writes)
	sort.Strings(deletes)
	return writes, deletes, k.lists
}

// namespaceTree writes n files into root: nested directories, a sidecar
// for every seventh, and names that need escaping in a URL or a shell.
func namespaceTree(t *testing.T, root string, n int) {
	t.Helper()
	odd := []string{"sp ace.html", "ünï cødé.txt", "100%.txt", "q?a#b&c+d=e.txt", "emoji 🎉.json", "semi;colon,comma.txt", "quote'd \"x\".txt", "tab\tname.txt"}
	for i := range n {
		name := fmt.Sprintf("d%02d/f%04d.txt", i%20, i)
		if i < len(odd) {
			name = fmt.Sprintf("d%02d/%s", i%20, odd[i])
		}
		mustWrite(t, filepath.Join(root, name), fmt.Sprintf("content of file %d\n", i))
		if i%7 == 0 {
			mustWrite(t, filepath.Join(root, name+".meta.json"), fmt.Sprintf(`{"n": %d, "content-type": "text/plain", "tag": "<&>"}`, i))
		}
	}
}

// TestNamespaceIsTheTruth is issue 13's end-to-end proof: three `kvsync
// sync` runs, each with a new, empty state directory, as a CI job on a
// fresh runner does. The second writes exactly the changed and new keys and
// deletes exactly the removed files' keys; the third writes nothing; a key
// another tool wrote under the same prefix is never touched.
func TestNamespaceIsTheTruth(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("", "prefix: site/")
	namespaceTree(t, env.root, 2000)
	k := tally(env)
	fresh := func(run string) string { return filepath.Join(t.TempDir(), run) }
	sync := func(run string) string {
		t.Helper()
		out, err := runKvsync(t, env, "sync", "--config", env.config, "--state-dir", fresh(run))
		if err != nil {
			t.Fatalf("%s: %v\n%s", run, err, tail(out, 20))
		}
		return out
	}
	prefixed := func(want map[string]kvEntry) map[string]kvEntry {
		out := make(map[string]kvEntry, len(want))
		for key, v := range want {
			out["site/"+key] = v
		}
		return out
	}

	sync("run 1")
	writes, deletes, lists := k.took()
	if len(writes) != 2000 || len(deletes) != 0 || lists != 1 {
		t.Fatalf("run 1 wrote %d keys, deleted %d, listed %d times; want 2000, 0, 1", len(writes), len(deletes), lists)
	}
	env.waitConverged(t, prefixed(expectTree(t, env.root, nil)), converge)
	for key, ent := range env.em.Snapshot(testAccount, testNamespace) {
		_, m, ok := kvrecord.Split(ent.Metadata)
		if !ok || m.Owner != kvrecord.OwnerOf(testNamespace, "site/") {
			t.Fatalf("key %q carries no record of this sync: metadata %s", key, ent.Metadata)
		}
	}

	// Another tool's key under the prefix, written through the API.
	client, err := kvapi.New(kvapi.Options{BaseURL: env.srv.URL + "/client/v4", AccountID: testAccount, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	foreign := kvEntry{Value: "not kvsync's", Metadata: `{"by":"another tool"}`}
	if err := client.PutValue(context.Background(), testNamespace, "site/other-tool.txt", kvapi.Bytes([]byte(foreign.Value)),
		kvapi.PutOptions{Metadata: json.RawMessage(foreign.Metadata)}); err != nil {
		t.Fatal(err)
	}

	var wantWrites, wantDeletes []string
	files := treeFiles(t, env.root)
	for i, rel := range files[:80] {
		key := "site/" + rel
		switch {
		case i < 50:
			os.Remove(filepath.Join(env.root, rel))
			os.Remove(filepath.Join(env.root, rel+".meta.json"))
			wantDeletes = append(wantDeletes, key)
		case i < 70:
			mustWrite(t, filepath.Join(env.root, rel), "changed "+rel)
			wantWrites = append(wantWrites, key)
		default:
			added := fmt.Sprintf("new/%d %s", i, filepath.Base(rel))
			mustWrite(t, filepath.Join(env.root, added), "new "+added)
			wantWrites = append(wantWrites, "site/"+added)
		}
	}
	sort.Strings(wantWrites)
	sort.Strings(wantDeletes)
	k.reset()
	env.em.ResetCounts()
	out := sync("run 2")
	writes, deletes, lists = k.took()
	// The emulator's own counters agree with what the requests named.
	if w, d, l := emKeys(env.em, emulator.OpPut, emulator.OpBulkPut), emKeys(env.em, emulator.OpDelete, emulator.OpBulkDelete, emulator.OpBulkDeleteDeprecated), env.em.Count(emulator.OpList, 0); w != 30 || d != 50 || l != 3 {
		t.Errorf("emulator counted %d keys written, %d deleted, %d list requests in run 2; want 30, 50, 3", w, d, l)
	}
	if strings.Join(writes, "\n") != strings.Join(wantWrites, "\n") {
		t.Errorf("run 2 wrote %d keys, want exactly the %d changed and new ones:\n got %q\nwant %q", len(writes), len(wantWrites), writes, wantWrites)
	}
	if strings.Join(deletes, "\n") != strings.Join(wantDeletes, "\n") {
		t.Errorf("run 2 deleted %d keys, want exactly the %d removed files':\n got %q\nwant %q", len(deletes), len(wantDeletes), deletes, wantDeletes)
	}
	if lists != 3 { // 2001 keys, 1000 a page
		t.Errorf("run 2 made %d list requests, want 3", lists)
	}
	if !strings.Contains(out, "30 written") || !strings.Contains(out, "50 deleted") {
		t.Errorf("run 2's summary does not say 30 written and 50 deleted:\n%s", tail(out, 5))
	}
	want := prefixed(expectTree(t, env.root, nil))
	want["site/other-tool.txt"] = foreign
	env.waitConverged(t, want, converge)

	k.reset()
	env.em.ResetCounts()
	out = sync("run 3")
	writes, deletes, lists = k.took()
	if w, d := emKeys(env.em, emulator.OpPut, emulator.OpBulkPut), emKeys(env.em, emulator.OpDelete, emulator.OpBulkDelete, emulator.OpBulkDeleteDeprecated); w != 0 || d != 0 {
		t.Errorf("emulator counted %d keys written and %d deleted in run 3, want none", w, d)
	}
	if len(writes) != 0 || len(deletes) != 0 || lists != 2 { // 1961 keys
		t.Errorf("run 3 on an unchanged tree wrote %d keys and deleted %d with %d list requests; want 0, 0, 2\n%s", len(writes), len(deletes), lists, tail(out, 5))
	}
	env.waitConverged(t, want, converge)
	got := env.em.Snapshot(testAccount, testNamespace)["site/other-tool.txt"]
	if string(got.Metadata) != foreign.Metadata {
		t.Errorf("the other tool's key's metadata is now %s, want %s untouched", got.Metadata, foreign.Metadata)
	}
}

// emKeys sums the emulator's key counters of ops.
func emKeys(em *emulator.Emulator, ops ...string) int {
	n := 0
	for _, op := range ops {
		n += em.KeyCount(op)
	}
	return n
}

// treeFiles lists root's files that are not sidecars, sorted.
func treeFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".meta.json") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// TestDaemonStartsWithEmptyState: `kvsync run` with an empty state
// directory, on a namespace it already published (a new pod), becomes
// ready having written nothing for the unchanged files, and deletes the
// keys of the files removed while it was down.
func TestDaemonStartsWithEmptyState(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("", "")
	namespaceTree(t, env.root, 300)
	if out, err := runKvsync(t, env, "sync", "--config", env.config); err != nil {
		t.Fatalf("publish: %v\n%s", err, tail(out, 10))
	}
	var removed []string
	for _, rel := range treeFiles(t, env.root)[:5] {
		os.Remove(filepath.Join(env.root, rel))
		os.Remove(filepath.Join(env.root, rel+".meta.json"))
		removed = append(removed, rel)
	}
	k := tally(env)
	d := env.startDaemon("--state-dir", filepath.Join(t.TempDir(), "new-pod"))
	d.waitReady(converge)
	writes, deletes, lists := k.took()
	if len(writes) != 0 {
		t.Errorf("the new daemon wrote %d keys before it was ready, want 0: %q", len(writes), writes)
	}
	if strings.Join(deletes, "\n") != strings.Join(removed, "\n") {
		t.Errorf("the new daemon deleted %q, want exactly the removed files' keys %q", deletes, removed)
	}
	if lists != 1 {
		t.Errorf("the new daemon made %d list requests, want 1 (296 keys)", lists)
	}
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
	d.stop()
}

// TestSyncChecksWhatIsThere: with its state present, a sync still lists
// the namespace: keys deleted or overwritten behind its back are written
// again; and a sync that cannot reach the namespace fails even when it has
// nothing to write.
func TestSyncChecksWhatIsThere(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("max_retries: 0", "")
	publish(t, env, 5)
	client, err := kvapi.New(kvapi.Options{BaseURL: env.srv.URL + "/client/v4", AccountID: testAccount, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := client.DeleteValue(ctx, testNamespace, "f00.txt"); err != nil {
		t.Fatal(err)
	}
	if err := client.PutValue(ctx, testNamespace, "f01.txt", kvapi.Bytes([]byte("overwritten")), kvapi.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	k := tally(env)
	out, err := runKvsync(t, env, "sync", "--config", env.config)
	if err != nil {
		t.Fatalf("sync: %v\n%s", err, out)
	}
	writes, _, _ := k.took()
	if strings.Join(writes, " ") != "f00.txt f01.txt" || !strings.Contains(out, "2 keys were deleted or overwritten behind kvsync's back") {
		t.Fatalf("sync wrote %q, want the deleted and the overwritten key, and to say so:\n%s", writes, tail(out, 5))
	}
	env.waitConverged(t, expectTree(t, env.root, nil), converge)

	t.Run("with --trust-state it does not look, and says so", func(t *testing.T) {
		if err := client.DeleteValue(ctx, testNamespace, "f02.txt"); err != nil {
			t.Fatal(err)
		}
		out, err := runKvsync(t, env, "sync", "--config", env.config, "--trust-state")
		if err != nil || !strings.Contains(out, "0 written") || !strings.Contains(out, "listing skipped (--trust-state)") {
			t.Fatalf("sync --trust-state: %v\n%s", err, out)
		}
	})
	for _, tc := range []struct{ name, flag, env string }{
		{"a wrong token", "", "CLOUDFLARE_API_TOKEN=wrong-token"},
		{"an API where nothing listens", "--api-base-url=http://127.0.0.1:1/client/v4", ""},
	} {
		for _, trust := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, trust-state %v", tc.name, trust), func(t *testing.T) {
				args := []string{"sync", "--config", env.config}
				if tc.flag != "" {
					args = append(args, tc.flag)
				}
				if trust {
					args = append(args, "--trust-state")
				}
				cmd := exec.Command(kvsyncBin, args...)
				cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken)
				if tc.env != "" {
					cmd.Env = append(cmd.Env, tc.env)
				}
				out, err := cmd.CombinedOutput()
				if code := exitCode(t, err); code == 0 || !strings.Contains(string(out), "the namespace could not be listed") {
					t.Fatalf("exit %d, want non-zero naming the unreachable namespace:\n%s", code, out)
				}
			})
		}
	}
}

// TestSidecarBudget: kvsync's record takes 49 bytes of the 1,024 of
// metadata; check names the numbers for a sidecar that no longer fits,
// and record_in_metadata: false gives them back.
func TestSidecarBudget(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, "page.html"), "<p>hi</p>")
	// 1,010 bytes compacted: under KV's limit, over what is left beside the record.
	mustWrite(t, filepath.Join(env.root, "page.html.meta.json"), `{"k":"`+strings.Repeat("x", 1010-8)+`"}`)
	env.writeConfig("", "")
	out, err := runKvsync(t, env, "check", "--config", env.config)
	want := "metadata is 1010 bytes; at most 975 are available because kvsync reserves 49"
	if exitCode(t, err) != 1 || !strings.Contains(out, want) {
		t.Fatalf("check: %v, want exit 1 saying %q:\n%s", err, want, out)
	}
	env.writeConfig("", "record_in_metadata: false")
	if out, err := runKvsync(t, env, "check", "--config", env.config); err != nil {
		t.Fatalf("check with record_in_metadata: false: %v\n%s", err, out)
	}
	out, err = runKvsync(t, env, "sync", "--config", env.config)
	if err != nil || !strings.Contains(out, "record_in_metadata is off") {
		t.Fatalf("sync with record_in_metadata: false: %v, want a warning:\n%s", err, out)
	}
	got := env.em.Snapshot(testAccount, testNamespace)["page.html"].Metadata
	if len(got) != 1010 || strings.Contains(string(got), kvrecord.Field) {
		t.Errorf("metadata with record_in_metadata: false is %d bytes, want the sidecar's 1010 exactly", len(got))
	}
}

// TestStaleListingHealsEndToEnd: the emulator's listings lag the writes
// (FreezeListings, the model of KV's up-to-a-minute lag) while runs with
// fresh state directories change the tree. The lag delays a deletion and
// causes a redundant write; once listings catch up, the next run heals
// both, and no key is lost track of.
func TestStaleListingHealsEndToEnd(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("", "")
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a1")
	k := tally(env)
	sync := func(run string) ([]string, []string) {
		t.Helper()
		k.reset()
		out, err := runKvsync(t, env, "sync", "--config", env.config, "--state-dir", filepath.Join(t.TempDir(), "state"))
		if err != nil {
			t.Fatalf("%s: %v\n%s", run, err, tail(out, 10))
		}
		w, d, _ := k.took()
		return w, d
	}
	sync("publish")
	env.em.FreezeListings(testAccount, testNamespace)
	mustWrite(t, filepath.Join(env.root, "a.txt"), "a2")
	mustWrite(t, filepath.Join(env.root, "n.txt"), "new")
	if w, _ := sync("change a, add n"); strings.Join(w, " ") != "a.txt n.txt" {
		t.Fatalf("wrote %q, want a.txt and n.txt", w)
	}
	os.Remove(filepath.Join(env.root, "n.txt"))
	w, d := sync("remove n, listing stale")
	if strings.Join(w, " ") != "a.txt" || len(d) != 0 {
		t.Fatalf("with a stale listing: wrote %q, deleted %q; want a.txt again (redundant) and no deletion yet", w, d)
	}
	env.em.ThawListings(testAccount, testNamespace)
	w, d = sync("listing caught up")
	if len(w) != 0 || strings.Join(d, " ") != "n.txt" {
		t.Fatalf("after the listing caught up: wrote %q, deleted %q; want nothing written and n.txt deleted", w, d)
	}
	env.waitConverged(t, expectTree(t, env.root, nil), converge)
}

// TestStampsPersisted: what a sync wrote is recorded with the stat of the
// file it read (the persisted hash cache), so the next process knows an
// unchanged file without reading it (watcher.TestRecordedStampSkipsRead).
func TestStampsPersisted(t *testing.T) {
	env := newKVEnv(t, emulator.Faults{})
	env.writeConfig("", "")
	namespaceTree(t, env.root, 50)
	time.Sleep(desired.RacyWindow + 100*time.Millisecond) // stamps vouch only for settled files
	if out, err := runKvsync(t, env, "sync", "--config", env.config); err != nil {
		t.Fatalf("sync: %v\n%s", err, out)
	}
	st, err := state.Open(filepath.Join(env.stateDir, "state.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, rel := range treeFiles(t, env.root) {
		fi, err := os.Stat(filepath.Join(env.root, rel))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := desired.StampOf(fi)
		rec, ok, err := st.Get(testAccount+"/"+testNamespace, rel)
		if err != nil || !ok || rec.Stamp != want {
			t.Fatalf("record of %q: %+v (%v, %v); want the file's stamp %+v", rel, rec.Stamp, ok, err, want)
		}
	}
}
