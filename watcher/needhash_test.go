package watcher

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kvsync/kvsync/internal/desired"
)

// needOnly is a NeedHash that wants the hashes of the given keys only,
// recording every key it is asked about.
type needOnly struct {
	mu    sync.Mutex
	want  map[string]bool
	asked []string
}

func (n *needOnly) need(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.asked = append(n.asked, key)
	return n.want[key]
}

// Files whose hash the sink does not need are not opened: their states
// have no hash but everything else (size, path, metadata, expiration), and
// the rules that do not need the content still hold them back.
func TestScanNeedHash(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "hashed.txt", "hashed")
	write(t, root, "new.txt", "brand new")
	write(t, root, "dir/new2.txt", "in a directory")
	write(t, root, "dir/new2.txt.meta.json", `{"a": 1}`)
	write(t, root, "bad.txt", "bad sidecar")
	write(t, root, "bad.txt.meta.json", `[1]`)
	write(t, root, "big.txt", "more than ten bytes")
	opts := testOpts(t, root)
	opts.Prefix = "p/"
	opts.MaxFileSize = 15
	opts.ExpirationRules = []ExpirationRule{{Match: "dir/**", TTL: 120e9}}
	need := &needOnly{want: map[string]bool{"p/hashed.txt": true}}
	opts.NeedHash = need.need
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	opened := &countingOpen{}
	w.open = opened.open
	snap, err := w.Scan(context.Background(), desired.TriggerStartup)
	if err != nil || !snap.Complete {
		t.Fatal(snap.Reason, err)
	}
	got := map[string]desired.State{}
	for _, st := range snap.States {
		got[st.Key] = st
	}
	if st := got["p/hashed.txt"]; st.Hash != sha("hashed") || st.Err != nil {
		t.Errorf("hashed.txt: %+v, want its hash", st)
	}
	for rel, content := range map[string]string{"new.txt": "brand new", "dir/new2.txt": "in a directory"} {
		st := got["p/"+rel]
		if st.Hash != "" || st.Err != nil || st.Size != int64(len(content)) || st.Path != filepath.Join(root, filepath.FromSlash(rel)) {
			t.Errorf("%s: %+v, want no hash, size %d and its path", rel, st, len(content))
		}
	}
	if st := got["p/dir/new2.txt"]; string(st.Metadata) != `{"a":1}` || st.Expiration.TTL != 120e9 {
		t.Errorf("dir/new2.txt lost its metadata or expiration: %+v", st)
	}
	if st := got["p/bad.txt"]; !errors.Is(st.Err, ErrBadSidecar) {
		t.Errorf("bad.txt: %+v, want held back for its sidecar", st)
	}
	if st := got["p/big.txt"]; !errors.Is(st.Err, ErrTooLarge) {
		t.Errorf("big.txt: %+v, want held back as too large", st)
	}
	var files []string
	for _, n := range opened.names {
		if !strings.HasSuffix(n, SidecarSuffix) {
			files = append(files, filepath.Base(n))
		}
	}
	if strings.Join(files, ",") != "hashed.txt" {
		t.Errorf("opened %v; want only hashed.txt", files)
	}
	for _, k := range need.asked {
		if !strings.HasPrefix(k, "p/") {
			t.Errorf("NeedHash asked about %q, not a key", k)
		}
	}
}

// An event on a file whose hash was not computed is always emitted, even
// when nothing the watcher can see without reading it has changed: the
// content may have.
func TestRunUnhashedAlwaysEmitted(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write(t, root, "f.txt", "one")
	write(t, root, "g.txt", "one")
	opts := testOpts(t, root)
	opts.NeedHash = func(key string) bool { return key == "g.txt" }
	r := start(t, opts, nil)
	for i, content := range []string{"two", "six"} { // same size every time
		m := r.sink.mark()
		write(t, root, "f.txt", content)
		write(t, root, "g.txt", "one") // rewritten, same content
		got := r.sync(t, m)
		if len(got) != 1 || got[0].Key != "f.txt" || got[0].Hash != "" || got[0].Size != 3 || got[0].Path != filepath.Join(root, "f.txt") {
			t.Fatalf("write %d emitted %s; want only f.txt without a hash", i, fmtStates(got))
		}
	}
}
