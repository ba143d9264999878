package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/kvsync/kvsync/kvapi"
)

// KV is a fake kvapi.KV for the tests of decorators (retries, rate
// limiting, instrumentation): it stores nothing, records every call and
// answers it from a script of errors. It is safe for concurrent use. The
// zero value answers every call with success.
//
// For the engine's tests, which need a store that remembers what was
// written, an in-memory KV is still their own (uploader's fakeKV).
type KV struct {
	// Script answers the n-th call, of any operation, with Script[n]
	// (nil: success).
	Script []error
	// Err answers every call past the script.
	Err error
	// Pages are ListKeys' answers: the first page for the empty cursor,
	// each page's Cursor set to lead to the next, the last with none. With
	// no pages, ListKeys answers one empty page.
	Pages []kvapi.KeyPage

	mu     sync.Mutex
	ops    []kvapi.Op
	at     []time.Time
	bodies []string
}

var _ kvapi.KV = (*KV)(nil)

// next records a call of op and returns its scripted error.
func (f *KV) next(op kvapi.Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.ops)
	f.ops = append(f.ops, op)
	f.at = append(f.at, time.Now())
	if n < len(f.Script) {
		return f.Script[n]
	}
	return f.Err
}

// Calls returns how many calls were made, of any operation.
func (f *KV) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ops)
}

// Ops returns the operation of every call, in order.
func (f *KV) Ops() []kvapi.Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]kvapi.Op(nil), f.ops...)
}

// Times returns when each call was made, in order.
func (f *KV) Times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.at...)
}

// Bodies returns what each PutValue call read from its value, in order.
func (f *KV) Bodies() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.bodies...)
}

// PutValue reads the whole value, as the client streams it on every
// attempt, records it and answers from the script.
func (f *KV) PutValue(_ context.Context, _, _ string, v kvapi.Value, _ kvapi.PutOptions) error {
	if v != nil {
		rc, err := v.Open()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, string(b))
		f.mu.Unlock()
	}
	return f.next(kvapi.OpPut)
}

// BulkPut reports every pair written, or the scripted error.
func (f *KV) BulkPut(_ context.Context, _ string, pairs []kvapi.BulkPair) (kvapi.BulkResult, error) {
	if err := f.next(kvapi.OpBulkPut); err != nil {
		return kvapi.BulkResult{}, err
	}
	return kvapi.BulkResult{SuccessfulKeyCount: len(pairs)}, nil
}

// DeleteValue answers from the script.
func (f *KV) DeleteValue(context.Context, string, string) error { return f.next(kvapi.OpDelete) }

// BulkDelete reports every key deleted, or the scripted error.
func (f *KV) BulkDelete(_ context.Context, _ string, keys []string) (kvapi.BulkResult, error) {
	if err := f.next(kvapi.OpBulkDelete); err != nil {
		return kvapi.BulkResult{}, err
	}
	return kvapi.BulkResult{SuccessfulKeyCount: len(keys)}, nil
}

// ListKeys answers the page the cursor leads to (see Pages).
func (f *KV) ListKeys(_ context.Context, _ string, o kvapi.ListOptions) (kvapi.KeyPage, error) {
	if err := f.next(kvapi.OpList); err != nil {
		return kvapi.KeyPage{}, err
	}
	if len(f.Pages) == 0 {
		return kvapi.KeyPage{}, nil
	}
	i := 0
	if o.Cursor != "" {
		n, err := strconv.Atoi(o.Cursor)
		if err != nil || n <= 0 || n >= len(f.Pages) {
			return kvapi.KeyPage{}, fmt.Errorf("testkit.KV: unknown cursor %q", o.Cursor)
		}
		i = n
	}
	page := f.Pages[i]
	page.Keys = append([]kvapi.KeyInfo(nil), page.Keys...)
	page.Cursor = ""
	if i+1 < len(f.Pages) {
		page.Cursor = strconv.Itoa(i + 1)
	}
	return page, nil
}

// GetValue answers an empty value that never expires, or the scripted error.
func (f *KV) GetValue(context.Context, string, string) (kvapi.ValueInfo, error) {
	if err := f.next(kvapi.OpGet); err != nil {
		return kvapi.ValueInfo{}, err
	}
	return kvapi.ValueInfo{Value: []byte{}}, nil
}

// GetMetadata answers JSON null (no metadata), or the scripted error.
func (f *KV) GetMetadata(context.Context, string, string) (json.RawMessage, error) {
	if err := f.next(kvapi.OpGetMetadata); err != nil {
		return nil, err
	}
	return json.RawMessage("null"), nil
}

// Bytes is a kvapi.Value held in memory.
type Bytes []byte

// Size is the value's length.
func (b Bytes) Size() int64 { return int64(len(b)) }

// Open returns a reader of the whole value.
func (b Bytes) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }

// Call makes one call of op on kv with fixed arguments (namespace "ns", key
// "k", the value "payload", one bulk pair or key "a") and returns its error:
// tests of decorators run every operation through the same table.
func Call(ctx context.Context, kv kvapi.KV, op kvapi.Op) error {
	var err error
	switch op {
	case kvapi.OpPut:
		err = kv.PutValue(ctx, "ns", "k", Bytes("payload"), kvapi.PutOptions{})
	case kvapi.OpBulkPut:
		_, err = kv.BulkPut(ctx, "ns", []kvapi.BulkPair{{Key: "a"}})
	case kvapi.OpDelete:
		err = kv.DeleteValue(ctx, "ns", "k")
	case kvapi.OpBulkDelete:
		_, err = kv.BulkDelete(ctx, "ns", []string{"a"})
	case kvapi.OpList:
		_, err = kv.ListKeys(ctx, "ns", kvapi.ListOptions{})
	case kvapi.OpGet:
		_, err = kv.GetValue(ctx, "ns", "k")
	case kvapi.OpGetMetadata:
		_, err = kv.GetMetadata(ctx, "ns", "k")
	default:
		panic(fmt.Sprintf("testkit.Call: unknown op %q", op))
	}
	return err
}
