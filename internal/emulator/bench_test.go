package emulator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func bulkBody(b testing.TB, start, n, size int) []byte {
	var buf bytes.Buffer
	buf.WriteByte('[')
	val := strings.Repeat("v", size)
	for i := range n {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"key":"site/page-%07d.html","value":%q}`, start+i, val)
	}
	buf.WriteByte(']')
	return buf.Bytes()
}

func benchDo(b *testing.B, client *http.Client, method, u string, body []byte) {
	req, _ := http.NewRequest(method, u, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer bench")
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("%s %s: %d", method, u, resp.StatusCode)
	}
}

func benchModes(b *testing.B, fn func(b *testing.B, h *harness)) {
	b.Run("memory", func(b *testing.B) { fn(b, newHarness(b, Options{})) })
	b.Run("datadir", func(b *testing.B) { fn(b, newHarness(b, Options{DataDir: b.TempDir()})) })
}

// BenchmarkBulkWrite10k writes 10,000 pairs of 1 KiB per request over HTTP.
func BenchmarkBulkWrite10k(b *testing.B) {
	body := bulkBody(b, 0, 10000, 1024)
	benchModes(b, func(b *testing.B, h *harness) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			benchDo(b, h.srv.Client(), "PUT", h.nsURL("/bulk"), body)
		}
	})
}

// BenchmarkList100k pages through 100,000 keys (100 requests of 1,000).
func BenchmarkList100k(b *testing.B) {
	benchModes(b, func(b *testing.B, h *harness) {
		for i := 0; i < 100000; i += 10000 {
			benchDo(b, h.srv.Client(), "PUT", h.nsURL("/bulk"), bulkBody(b, i, 10000, 16))
		}
		b.ResetTimer()
		for b.Loop() {
			cursor, pages := "", 0
			for {
				u := h.nsURL("/keys?prefix=site%2F")
				if cursor != "" {
					u += "&cursor=" + url.QueryEscape(cursor)
				}
				p, r := h.list(u[len(h.nsURL("/keys")):])
				if r.status != 200 {
					b.Fatal(r.status)
				}
				pages++
				if p.Cursor == "" {
					break
				}
				cursor = p.Cursor
			}
			if pages != 100 {
				b.Fatalf("%d pages", pages)
			}
		}
	})
}

// BenchmarkPut1KiB writes single 1 KiB values (fsynced in datadir mode).
func BenchmarkPut1KiB(b *testing.B) {
	val := bytes.Repeat([]byte("x"), 1024)
	benchModes(b, func(b *testing.B, h *harness) {
		b.SetBytes(1024)
		i := 0
		for b.Loop() {
			benchDo(b, h.srv.Client(), "PUT", h.nsURL(fmt.Sprintf("/values/k%d", i%1000)), val)
			i++
		}
	})
}

func TestListenAndServe(t *testing.T) {
	e, err := New(Options{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- ListenAndServe(ctx, "127.0.0.1:0", e, nil, func(a net.Addr) { addrc <- a }) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("ListenAndServe: %v", err)
	}
	req, _ := http.NewRequest("PUT", "http://"+addr.String()+PathPrefix+"/accounts/a/storage/kv/namespaces/n/values/k", strings.NewReader("v"))
	req.Header.Set("Authorization", "Bearer t")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ListenAndServe did not return after cancel")
	}
	if err := ListenAndServe(context.Background(), "256.0.0.1:1", e, nil, nil); err == nil {
		t.Error("an invalid address was accepted")
	}
}
