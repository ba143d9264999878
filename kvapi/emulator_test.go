package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// The emulator is an independent reading of the same API (it shares no code
// with this client); these tests make each check the other.

func newEmulatorClient(tb testing.TB) (*Client, *emulator.Emulator) {
	tb.Helper()
	emu, err := emulator.New(emulator.Options{Token: testToken, Now: func() time.Time { return testNow }})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { emu.Close() })
	srv := httptest.NewServer(emu)
	tb.Cleanup(srv.Close)
	c, err := New(Options{
		BaseURL:    srv.URL + emulator.PathPrefix,
		AccountID:  testAccount,
		Token:      testToken,
		HTTPClient: srv.Client(),
		Now:        func() time.Time { return testNow },
	})
	if err != nil {
		tb.Fatal(err)
	}
	return c, emu
}

func TestAgainstEmulator(t *testing.T) {
	c, emu := newEmulatorClient(t)
	ctx := context.Background()
	want := map[string]emulator.Entry{}

	for i, key := range nastyKeys {
		value := []byte(fmt.Sprintf("value of %q \x00\xff", key))
		meta := json.RawMessage(fmt.Sprintf(`{ "i" : %d }`, i))
		if err := c.PutValue(ctx, testNS, key, Bytes(value), PutOptions{Metadata: meta, ExpirationTTL: 3600}); err != nil {
			t.Fatalf("put %q: %v", key, err)
		}
		want[key] = emulator.Entry{Value: value, Metadata: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), Expiration: testNow.Unix() + 3600}
	}
	big := genValue{size: 3<<20 + 1, seed: 9}
	if err := c.PutValue(ctx, testNS, "big", big, PutOptions{Expiration: testNow.Unix() + 60}); err != nil {
		t.Fatal(err)
	}
	rc, _ := big.Open()
	bigBytes := new(bytes.Buffer)
	bigBytes.ReadFrom(rc)
	want["big"] = emulator.Entry{Value: bigBytes.Bytes(), Expiration: testNow.Unix() + 60}

	res, err := c.BulkPut(ctx, testNS, []BulkPair{
		{Key: "bulk/text", Value: []byte("quote\" back\\ nl\n ctl\x01 é 😀")},
		{Key: "bulk/bin", Value: []byte{0xff, 0, 0xfe}, Metadata: json.RawMessage(`{"b":true}`)},
		{Key: "bulk/ttl", Value: []byte("t"), ExpirationTTL: 120},
	})
	if err != nil || res.SuccessfulKeyCount != 3 || len(res.Unsuccessful) != 0 {
		t.Fatalf("bulk put: %+v, %v", res, err)
	}
	want["bulk/text"] = emulator.Entry{Value: []byte("quote\" back\\ nl\n ctl\x01 é 😀")}
	want["bulk/bin"] = emulator.Entry{Value: []byte{0xff, 0, 0xfe}, Metadata: json.RawMessage(`{"b":true}`)}
	want["bulk/ttl"] = emulator.Entry{Value: []byte("t"), Expiration: testNow.Unix() + 120}

	got := emu.Snapshot(testAccount, testNS)
	if len(got) != len(want) {
		t.Errorf("emulator holds %d keys, want %d", len(got), len(want))
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("key %q missing in the emulator", k)
			continue
		}
		if !bytes.Equal(g.Value, w.Value) || string(g.Metadata) != string(w.Metadata) || g.Expiration != w.Expiration {
			t.Errorf("key %q: emulator has %d bytes, metadata %s, exp %d; want %d bytes, %s, %d",
				k, len(g.Value), g.Metadata, g.Expiration, len(w.Value), w.Metadata, w.Expiration)
		}
		v, err := c.GetValue(ctx, testNS, k)
		if err != nil || !bytes.Equal(v.Value, w.Value) || v.Expiration != w.Expiration {
			t.Errorf("GetValue %q: %d bytes, exp %d, %v", k, len(v.Value), v.Expiration, err)
		}
		m, err := c.GetMetadata(ctx, testNS, k)
		wantMeta := string(w.Metadata)
		if wantMeta == "" {
			wantMeta = "null"
		}
		if err != nil || string(m) != wantMeta {
			t.Errorf("GetMetadata %q: %s, %v; want %s", k, m, err, wantMeta)
		}
	}

	var listed []string
	pages := 0
	cursor := ""
	for {
		page, err := c.ListKeys(ctx, testNS, ListOptions{Limit: 10, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, k := range page.Keys {
			listed = append(listed, k.Name)
		}
		if cursor = page.Cursor; cursor == "" {
			break
		}
	}
	var wantNames []string
	for k := range want {
		wantNames = append(wantNames, k)
	}
	sort.Strings(wantNames)
	if !reflect.DeepEqual(listed, wantNames) || pages < 4 {
		t.Errorf("listed %d keys in %d pages, want %d keys in sorted order", len(listed), pages, len(wantNames))
	}
	var bulkNames []string
	if err := ListAll(ctx, c, testNS, "bulk/", func(k KeyInfo) error { bulkNames = append(bulkNames, k.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(bulkNames, []string{"bulk/bin", "bulk/text", "bulk/ttl"}) {
		t.Errorf("ListAll bulk/ = %q", bulkNames)
	}

	del, err := c.BulkDelete(ctx, testNS, nastyKeys)
	if err != nil || del.SuccessfulKeyCount != len(nastyKeys) {
		t.Fatalf("bulk delete: %+v, %v", del, err)
	}
	for _, k := range []string{"big", "bulk/text", "bulk/bin", "bulk/ttl"} {
		if err := c.DeleteValue(ctx, testNS, k); err != nil {
			t.Fatal(err)
		}
	}
	if left := emu.Snapshot(testAccount, testNS); len(left) != 0 {
		t.Errorf("%d keys left after deleting all", len(left))
	}
	_, err = c.GetValue(ctx, testNS, "big")
	if StatusCode(err) != 404 || !reflect.DeepEqual(codesOf(err), []int{10009}) || IsRetryable(err) {
		t.Errorf("GetValue of a deleted key: %v", err)
	}
}

func TestEmulatorFaultsClassify(t *testing.T) {
	c, emu := newEmulatorClient(t)
	ctx := context.Background()
	emu.SetFaults(emulator.Faults{Budget: 1, BudgetWindow: time.Minute})
	if err := c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	err := c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{})
	ra, limited := IsRateLimited(err)
	if !limited || ra <= 0 || !IsRetryable(err) {
		t.Errorf("over budget: %v (retry after %v, limited %v)", err, ra, limited)
	}
	emu.SetFaults(emulator.Faults{ServerErrorRate: 1})
	err = c.DeleteValue(ctx, testNS, "k")
	if s := StatusCode(err); s < 500 || !IsRetryable(err) {
		t.Errorf("server error: %v", err)
	}
	emu.SetFaults(emulator.Faults{DropRate: 1})
	_, err = c.ListKeys(ctx, testNS, ListOptions{})
	var ne *NetworkError
	if !errors.As(err, &ne) || !IsRetryable(err) {
		t.Errorf("dropped connection: %T %v", err, err)
	}
}

func BenchmarkPutValueEmulator(b *testing.B) {
	for _, s := range putSizes {
		b.Run(s.name, func(b *testing.B) {
			c, _ := newEmulatorClient(b)
			v := genValue{size: s.size}
			ctx := context.Background()
			b.SetBytes(s.size)
			b.ReportAllocs()
			for b.Loop() {
				if err := c.PutValue(ctx, testNS, "bench/key", v, PutOptions{Metadata: []byte(`{"a":1}`)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
