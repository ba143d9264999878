package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveForTest runs Serve on a loopback port until the test ends.
func serveForTest(t *testing.T, o ServerOptions) string {
	t.Helper()
	o.Addr = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, o, func(a net.Addr) { addrc <- a }) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case a := <-addrc:
		return a.String()
	case err := <-done:
		t.Fatalf("Serve returned early: %v", err)
	}
	return ""
}

// rawExchange sends req on a new connection and returns the response
// status, leaving the connection open for the test to inspect.
func rawExchange(t *testing.T, addr, req string) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c, br, resp.StatusCode
}

func TestServeLimits(t *testing.T) {
	addr := serveForTest(t, ServerOptions{})
	for _, tc := range []struct {
		name string
		req  string
		want int
	}{
		{"plain probe", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200},
		{"a body, which no endpoint takes", "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", http.StatusRequestEntityTooLarge},
		{"a chunked body", "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", http.StatusRequestEntityTooLarge},
		{"headers over the limit", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", maxHeaderBytes+8<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, got := rawExchange(t, addr, tc.req); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
}

// TestServeIdleFlood is the attack of issue 11: many keep-alive connections
// left idle after one request. The server closes idle ones to stay within
// its cap, and a probe still gets through.
func TestServeIdleFlood(t *testing.T) {
	addr := serveForTest(t, ServerOptions{})
	const flood = 3 * DefaultMaxConns
	var conns []*bufio.Reader
	var raw []net.Conn
	for range flood {
		c, br, status := rawExchange(t, addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if status != 200 {
			t.Fatalf("flood request: %d", status)
		}
		raw, conns = append(raw, c), append(conns, br)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz behind %d idle connections: %v", flood, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz behind %d idle connections: %d", flood, resp.StatusCode)
	}
	// Every connection past the cap pushed an idle one out.
	closed := 0
	for i, br := range conns {
		raw[i].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := br.ReadByte()
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			closed++
		}
	}
	if closed < flood-DefaultMaxConns {
		t.Errorf("%d of %d idle connections closed by the server; at most %d may stay open", closed, flood, DefaultMaxConns)
	}
}
