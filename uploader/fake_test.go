package uploader

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/kvapi"
)

// fakeKV is an in-memory kvapi.KV with call counters, scriptable errors and
// latency. It fails the test when two writes of one key overlap.
type fakeKV struct {
	t       testing.TB
	latency time.Duration

	mu      sync.Mutex
	data    map[string]fakeEntry
	calls   map[kvapi.Op]int
	writing map[string]bool
	bulks   []fakeBulk // every bulk write, in order

	// Hooks, called without the lock; nil means success.
	putErr     func(key string) error
	bulkErr    func(keys []string) error
	bulkFail   func(keys []string) []string // unsuccessful_keys of a bulk write
	deleteErr  func(key string) error
	duringPut  func(ctx context.Context, key string) // runs while the key's write is in flight
	listExtras []string                              // keys listed besides data's (not stored)
	// frozen, when set, is what listings show instead of data: a listing
	// that lags the writes (see freeze).
	frozen  map[string]fakeEntry
	listing func(ctx context.Context) // runs when a listing starts
	// sent runs when a write or deletion is called, before anything else.
	sent func(op kvapi.Op, keys []string)
	// applied runs after a write or deletion took effect; a non-nil error
	// is returned instead of success, as when the reply is lost.
	applied func(op kvapi.Op, keys []string) error
}

type fakeEntry struct {
	value []byte
	meta  json.RawMessage
	exp   int64
	ttl   int64
}

type fakeBulk struct {
	pairs int
	bytes int64
}

func newFakeKV(t testing.TB) *fakeKV {
	return &fakeKV{t: t, data: map[string]fakeEntry{}, calls: map[kvapi.Op]int{}, writing: map[string]bool{}}
}

var _ kvapi.KV = (*fakeKV)(nil)

func (f *fakeKV) begin(op kvapi.Op, keys ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	for _, k := range keys {
		if f.writing[k] {
			f.t.Errorf("two writes of key %q overlap", k)
		}
		f.writing[k] = true
	}
}

func (f *fakeKV) end(keys ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.writing, k)
	}
}

func (f *fakeKV) sleep(ctx context.Context) error {
	if f.latency == 0 {
		return ctx.Err()
	}
	select {
	case <-time.After(f.latency):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// hooks runs sent at the start of a write or deletion.
func (f *fakeKV) hooks(op kvapi.Op, keys []string) {
	if f.sent != nil {
		f.sent(op, keys)
	}
}

// after runs applied once a write or deletion took effect.
func (f *fakeKV) after(op kvapi.Op, keys []string) error {
	if f.applied != nil {
		return f.applied(op, keys)
	}
	return nil
}

func (f *fakeKV) PutValue(ctx context.Context, ns, key string, v kvapi.Value, opts kvapi.PutOptions) error {
	f.hooks(kvapi.OpPut, []string{key})
	f.begin(kvapi.OpPut, key)
	defer f.end(key)
	if f.duringPut != nil {
		f.duringPut(ctx, key)
	}
	if err := f.sleep(ctx); err != nil {
		return err
	}
	if f.putErr != nil {
		if err := f.putErr(key); err != nil {
			return err
		}
	}
	r, err := v.Open()
	if err != nil {
		return &kvapi.ValueError{Op: kvapi.OpPut, Key: key, Err: err}
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return &kvapi.ValueError{Op: kvapi.OpPut, Key: key, Err: err}
	}
	if int64(len(b)) != v.Size() {
		return &kvapi.ValueError{Op: kvapi.OpPut, Key: key, Err: kvapi.ErrValueSizeMismatch}
	}
	f.mu.Lock()
	f.data[key] = fakeEntry{value: b, meta: opts.Metadata, exp: opts.Expiration, ttl: opts.ExpirationTTL}
	f.mu.Unlock()
	return f.after(kvapi.OpPut, []string{key})
}

func (f *fakeKV) BulkPut(ctx context.Context, ns string, pairs []kvapi.BulkPair) (kvapi.BulkResult, error) {
	keys := make([]string, len(pairs))
	var n int64
	for i, p := range pairs {
		keys[i] = p.Key
		n += int64(len(p.Value))
	}
	f.hooks(kvapi.OpBulkPut, keys)
	f.begin(kvapi.OpBulkPut, keys...)
	defer f.end(keys...)
	if err := f.sleep(ctx); err != nil {
		return kvapi.BulkResult{}, err
	}
	if f.bulkErr != nil {
		if err := f.bulkErr(keys); err != nil {
			return kvapi.BulkResult{}, err
		}
	}
	var failed []string
	if f.bulkFail != nil {
		failed = f.bulkFail(keys)
	}
	f.mu.Lock()
	f.bulks = append(f.bulks, fakeBulk{pairs: len(pairs), bytes: n})
	for _, p := range pairs {
		if slices.Contains(failed, p.Key) {
			continue
		}
		f.data[p.Key] = fakeEntry{value: p.Value, meta: p.Metadata, exp: p.Expiration, ttl: p.ExpirationTTL}
	}
	f.mu.Unlock()
	if err := f.after(kvapi.OpBulkPut, keys); err != nil {
		return kvapi.BulkResult{}, err
	}
	return kvapi.BulkResult{SuccessfulKeyCount: len(pairs) - len(failed), Unsuccessful: failed}, nil
}

func (f *fakeKV) DeleteValue(ctx context.Context, ns, key string) error {
	f.hooks(kvapi.OpDelete, []string{key})
	f.begin(kvapi.OpDelete, key)
	defer f.end(key)
	if f.deleteErr != nil {
		if err := f.deleteErr(key); err != nil {
			return err
		}
	}
	f.mu.Lock()
	delete(f.data, key)
	f.mu.Unlock()
	return f.after(kvapi.OpDelete, []string{key})
}

func (f *fakeKV) BulkDelete(ctx context.Context, ns string, keys []string) (kvapi.BulkResult, error) {
	f.hooks(kvapi.OpBulkDelete, keys)
	f.begin(kvapi.OpBulkDelete, keys...)
	defer f.end(keys...)
	if f.deleteErr != nil {
		for _, k := range keys {
			if err := f.deleteErr(k); err != nil {
				return kvapi.BulkResult{}, err
			}
		}
	}
	f.mu.Lock()
	for _, k := range keys {
		delete(f.data, k)
	}
	f.mu.Unlock()
	if err := f.after(kvapi.OpBulkDelete, keys); err != nil {
		return kvapi.BulkResult{}, err
	}
	return kvapi.BulkResult{SuccessfulKeyCount: len(keys)}, nil
}

func (f *fakeKV) ListKeys(ctx context.Context, ns string, opts kvapi.ListOptions) (kvapi.KeyPage, error) {
	if f.listing != nil {
		f.listing(ctx)
	}
	f.begin(kvapi.OpList)
	f.mu.Lock()
	defer f.mu.Unlock()
	var page kvapi.KeyPage
	data := f.data
	if f.frozen != nil {
		data = f.frozen
	}
	for k, e := range data {
		if strings.HasPrefix(k, opts.Prefix) {
			page.Keys = append(page.Keys, kvapi.KeyInfo{Name: k, Metadata: e.meta, Expiration: e.exp})
		}
	}
	for _, k := range f.listExtras {
		if strings.HasPrefix(k, opts.Prefix) {
			page.Keys = append(page.Keys, kvapi.KeyInfo{Name: k})
		}
	}
	return page, nil
}

func (f *fakeKV) GetValue(ctx context.Context, ns, key string) (kvapi.ValueInfo, error) {
	f.begin(kvapi.OpGet)
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.data[key]
	if !ok {
		return kvapi.ValueInfo{}, &kvapi.APIError{Op: kvapi.OpGet, Key: key, StatusCode: 404, Errors: []kvapi.ErrorItem{{Code: 10009, Message: "get: 'key not found'"}}}
	}
	return kvapi.ValueInfo{Value: e.value, Expiration: e.exp}, nil
}

func (f *fakeKV) GetMetadata(ctx context.Context, ns, key string) (json.RawMessage, error) {
	f.begin(kvapi.OpGetMetadata)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.data[key].meta, nil
}

// freeze makes listings show the data as it is now until thaw, as a
// listing that lags the writes does.
func (f *fakeKV) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = maps.Clone(f.data)
}

func (f *fakeKV) thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = nil
}

func (f *fakeKV) count(ops ...kvapi.Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, op := range ops {
		n += f.calls[op]
	}
	return n
}

func (f *fakeKV) writes() int {
	return f.count(kvapi.OpPut, kvapi.OpBulkPut, kvapi.OpDelete, kvapi.OpBulkDelete)
}

func (f *fakeKV) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func (f *fakeKV) get(key string) (fakeEntry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.data[key]
	return e, ok
}

func (f *fakeKV) set(key, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data[key] = fakeEntry{value: []byte(value)}
}

// memStore is an in-memory Store with scriptable errors.
type memStore struct {
	mu     sync.Mutex
	recs   map[string]map[string]state.Record
	puts   int
	gets   atomic.Int64 // Get calls
	getErr error
	putErr error // PutBatch fails with it, storing nothing
}

func newMemStore() *memStore { return &memStore{recs: map[string]map[string]state.Record{}} }

func (m *memStore) Get(scope, key string) (state.Record, bool, error) {
	m.gets.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.getErr != nil {
		return state.Record{}, false, m.getErr
	}
	r, ok := m.recs[scope][key]
	return r, ok, nil
}

func (m *memStore) GetMany(scope string, keys []string) (map[string]state.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.getErr != nil {
		return nil, m.getErr
	}
	recs := make(map[string]state.Record)
	for _, k := range keys {
		if r, ok := m.recs[scope][k]; ok {
			recs[k] = r
		}
	}
	return recs, nil
}

func (m *memStore) PutBatch(scope string, recs map[string]state.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.putErr != nil {
		return m.putErr
	}
	m.puts++
	if m.recs[scope] == nil {
		m.recs[scope] = map[string]state.Record{}
	}
	for k, r := range recs {
		m.recs[scope][k] = r
	}
	return nil
}

func (m *memStore) DeleteBatch(scope string, keys []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range keys {
		delete(m.recs[scope], k)
	}
	return nil
}

func (m *memStore) ForEach(scope, prefix string, fn func(string, state.Record) error) error {
	return m.ForEachFrom(scope, prefix, "", fn)
}

func (m *memStore) ForEachFrom(scope, prefix, from string, fn func(string, state.Record) error) error {
	m.mu.Lock()
	var keys []string
	for k := range m.recs[scope] {
		if strings.HasPrefix(k, prefix) && k >= from {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	recs := make([]state.Record, len(keys))
	for i, k := range keys {
		recs[i] = m.recs[scope][k]
	}
	m.mu.Unlock()
	for i, k := range keys {
		if err := fn(k, recs[i]); err != nil {
			return err
		}
	}
	return nil
}

func (m *memStore) record(key string) (state.Record, bool) {
	r, ok, _ := m.Get(testScope, key)
	return r, ok
}

func (m *memStore) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs[testScope])
}

const (
	testScope  = "acct/ns"
	testNS     = "ns"
	testPrefix = "site/"
)

// tree is a directory of files on disk with their desired states.
type tree struct {
	t    testing.TB
	root string
}

func newTree(t testing.TB) *tree { return &tree{t: t, root: t.TempDir()} }

// write creates or replaces rel and returns its desired state.
func (tr *tree) write(rel, content string) desired.State {
	tr.t.Helper()
	p := filepath.Join(tr.root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tr.t.Fatal(err)
	}
	return tr.state(rel)
}

// state hashes rel as the watcher would.
func (tr *tree) state(rel string) desired.State {
	tr.t.Helper()
	p := filepath.Join(tr.root, filepath.FromSlash(rel))
	b, err := os.ReadFile(p)
	if err != nil {
		tr.t.Fatal(err)
	}
	st := scanned(tr.t, tr.root, rel)
	st.Key, st.Hash, st.Size = testPrefix+rel, sha256Hex(b), int64(len(b))
	return st
}

// scanned returns where the watcher would say the bytes of rel beneath
// root are, and the identity it would pin: Path, Root, Rel and File.
func scanned(t testing.TB, root, rel string) desired.State {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := beneath.IdentityOf(fi)
	if !ok {
		t.Fatalf("%s: not a regular file", p)
	}
	return desired.State{Path: p, Root: root, Rel: rel, File: id, Size: fi.Size()}
}

func (tr *tree) remove(rel string) desired.State {
	tr.t.Helper()
	if err := os.Remove(filepath.Join(tr.root, filepath.FromSlash(rel))); err != nil {
		tr.t.Fatal(err)
	}
	return desired.State{Key: testPrefix + rel, Deleted: true}
}

func complete(states ...desired.State) desired.Snapshot {
	return desired.Snapshot{Trigger: desired.TriggerManual, States: states, Complete: true}
}

// newTestEngine builds an engine with test defaults: short backoff,
// unlimited deletes, a log captured in logs.
func newTestEngine(t testing.TB, kv kvapi.KV, st Store, mod func(*Options)) (*Engine, *testkit.Buffer) {
	t.Helper()
	logs := &testkit.Buffer{}
	o := Options{
		KV: kv, Store: st, Scope: testScope, Namespace: testNS, Prefix: testPrefix,
		MaxDeletes: -1, RetryBackoff: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&o)
	}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return e, logs
}

// running starts Run for the test's duration.
func running(t testing.TB, e *Engine) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func waitIdle(t testing.TB, e *Engine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.WaitIdle(ctx); err != nil {
		t.Fatalf("engine never became idle: %v", err)
	}
}

func mustContent(t testing.TB, kv *fakeKV, key, want string) {
	t.Helper()
	e, ok := kv.get(key)
	if !ok {
		t.Fatalf("key %q missing from KV", key)
	}
	if string(e.value) != want {
		t.Fatalf("key %q holds %q, want %q", key, e.value, want)
	}
}

func apiErr(status, code int) error {
	return &kvapi.APIError{Op: kvapi.OpPut, StatusCode: status, Errors: []kvapi.ErrorItem{{Code: code, Message: fmt.Sprintf("code %d", code)}}}
}
