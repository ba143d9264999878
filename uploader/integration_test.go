package uploader

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// The engine against the real client and the local emulator: bulk and
// streamed writes land byte for byte, a restart writes nothing, a removed
// file's key is deleted and a key kvsync never wrote is left alone.
func TestIntegrationEmulator(t *testing.T) {
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	srv := httptest.NewServer(em)
	defer srv.Close()
	client, err := kvapi.New(kvapi.Options{BaseURL: srv.URL + emulator.PathPrefix, AccountID: "acct", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Seed("acct", testNS, testPrefix+"foreign", emulator.Entry{Value: []byte("not ours")}); err != nil {
		t.Fatal(err)
	}

	tr := newTree(t)
	small := tr.write("index.html", "<h1>hello</h1>")
	small.Metadata = json.RawMessage(`{"type":"text/html"}`)
	binary := tr.write("img/logo.bin", "\x00\xff\xfe binary \x80")
	big := tr.write("big.txt", strings.Repeat("large file ", 300))
	big.Expiration = desired.Expiration{TTL: time.Hour}
	gone := tr.write("old.txt", "soon removed")
	states := []desired.State{small, binary, big, gone}

	store, err := state.Open(t.TempDir()+"/state.db", state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	opts := func(o *Options) { o.BulkThreshold = 1000; o.BulkMaxBytes = 1 << 20 }
	e, _ := newTestEngine(t, client, store, opts)
	rep, err := e.SyncOnce(context.Background(), complete(states...))
	if err != nil || rep.Written != 4 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if em.Count(emulator.OpBulkPut, 200) != 1 || em.Count(emulator.OpPut, 200) != 1 {
		t.Fatalf("requests %v; want one bulk write and one streamed write", em.Counts())
	}
	got := em.Snapshot("acct", testNS)
	for _, st := range states {
		want := readFile(t, st.Path)
		if string(got[st.Key].Value) != want {
			t.Fatalf("%s holds %q, want %q", st.Key, got[st.Key].Value, want)
		}
	}
	if string(got[small.Key].Metadata) != `{"type":"text/html"}` || got[big.Key].Expiration == 0 {
		t.Fatalf("metadata %s, expiration %d", got[small.Key].Metadata, got[big.Key].Expiration)
	}

	// A restart on the unchanged tree makes no request at all.
	em.ResetCounts()
	e2, _ := newTestEngine(t, client, store, opts)
	rep, err = e2.SyncOnce(context.Background(), complete(states...))
	if err != nil || rep.Unchanged != 4 || len(em.Counts()) != 0 {
		t.Fatalf("%+v, %v, requests %v", rep, err, em.Counts())
	}

	del := tr.remove("old.txt")
	rep, err = e2.SyncOnce(context.Background(), complete(small, binary, big))
	if err != nil || rep.Deleted != 1 {
		t.Fatalf("%+v, %v", rep, err)
	}
	got = em.Snapshot("acct", testNS)
	if _, ok := got[del.Key]; ok {
		t.Fatal("removed file's key still there")
	}
	if string(got[testPrefix+"foreign"].Value) != "not ours" {
		t.Fatal("foreign key touched")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
