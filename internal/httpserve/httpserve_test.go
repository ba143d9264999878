package httpserve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// noFDLimit keeps the configured cap whatever the test machine's limit.
func noFDLimit() int { return 0 }

// testServer serves o on loopback until the test ends.
type testServer struct {
	addr string
	srv  *http.Server
	ll   *limitListener
}

func startServer(t *testing.T, o Options) *testServer {
	t.Helper()
	return startServerClock(t, o, time.Now)
}

func startServerClock(t *testing.T, o Options, now func() time.Time) *testServer {
	t.Helper()
	if o.FDLimit == nil {
		o.FDLimit = noFDLimit
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, ll := newServer(ln, o, now)
	done := make(chan struct{})
	go func() { srv.Serve(ll); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return &testServer{addr: ln.Addr().String(), srv: srv, ll: ll}
}

// rawConn is a client connection driven by hand, to hold it idle, half
// written or silent.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

// get sends one keep-alive GET and reads the whole response.
func (c *rawConn) get(t *testing.T, path string, extraHeaders ...string) (*http.Response, string) {
	t.Helper()
	req := "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + strings.Join(extraHeaders, "") + "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("writing GET %s: %v", path, err)
	}
	return c.read(t)
}

func (c *rawConn) read(t *testing.T) (*http.Response, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

// closedByServer reports whether the server closed the connection within
// d: a read ends with EOF or a reset rather than the read deadline.
func (c *rawConn) closedByServer(d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
}

// settings are the http.Server fields TestServerSettings checks.
type settings struct {
	ReadHeaderTimeout, IdleTimeout time.Duration
	MaxHeaderBytes                 int
}

func TestServerSettings(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name string
		o    Options
		want settings
		cap  int
	}{
		{"defaults", Options{FDLimit: noFDLimit},
			settings{ReadHeaderTimeout: DefaultReadHeaderTimeout, IdleTimeout: DefaultIdleTimeout, MaxHeaderBytes: DefaultMaxHeaderBytes}, DefaultMaxConns},
		{"set", Options{MaxConns: 7, ReadHeaderTimeout: time.Second, IdleTimeout: 2 * time.Second, MaxHeaderBytes: 999, FDLimit: noFDLimit},
			settings{ReadHeaderTimeout: time.Second, IdleTimeout: 2 * time.Second, MaxHeaderBytes: 999}, 7},
		{"low fd limit", Options{MaxConns: 100, FDLimit: func() int { return 128 }},
			settings{ReadHeaderTimeout: DefaultReadHeaderTimeout, IdleTimeout: DefaultIdleTimeout, MaxHeaderBytes: DefaultMaxHeaderBytes}, 16},
		{"tiny fd limit", Options{MaxConns: 100, FDLimit: func() int { return 10 }},
			settings{ReadHeaderTimeout: DefaultReadHeaderTimeout, IdleTimeout: DefaultIdleTimeout, MaxHeaderBytes: DefaultMaxHeaderBytes}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, ll := newServer(ln, tc.o, time.Now)
			if srv.ReadHeaderTimeout != tc.want.ReadHeaderTimeout || srv.IdleTimeout != tc.want.IdleTimeout || srv.MaxHeaderBytes != tc.want.MaxHeaderBytes {
				t.Errorf("ReadHeaderTimeout %v IdleTimeout %v MaxHeaderBytes %d, want %v %v %d",
					srv.ReadHeaderTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, tc.want.ReadHeaderTimeout, tc.want.IdleTimeout, tc.want.MaxHeaderBytes)
			}
			if srv.IdleTimeout <= 0 || srv.ReadHeaderTimeout <= 0 {
				t.Error("an idle or header timeout is unset: connections could be held forever")
			}
			if srv.ConnState == nil {
				t.Error("no ConnState hook: idle connections cannot be found at the cap")
			}
			if ll.max != tc.cap {
				t.Errorf("connection cap %d, want %d", ll.max, tc.cap)
			}
		})
	}
}

func TestIdleConnectionClosedAfterIdleTimeout(t *testing.T) {
	ts := startServer(t, Options{Handler: okHandler(), IdleTimeout: 200 * time.Millisecond})
	c := dial(t, ts.addr)
	if resp, _ := c.get(t, "/"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	start := time.Now()
	if !c.closedByServer(10 * time.Second) {
		t.Fatal("an idle keep-alive connection was still open after 10s with IdleTimeout 200ms")
	}
	t.Logf("idle connection closed after %v", time.Since(start).Round(time.Millisecond))
}

func TestSilentConnectionClosedAfterHeaderTimeout(t *testing.T) {
	ts := startServer(t, Options{Handler: okHandler(), ReadHeaderTimeout: 200 * time.Millisecond})
	c := dial(t, ts.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	if !c.closedByServer(10 * time.Second) {
		t.Fatal("a connection that never finished its headers was still open after 10s")
	}
}

func TestRequestTimeout(t *testing.T) {
	readErr := make(chan error, 1)
	ts := startServer(t, Options{
		RequestTimeout: 200 * time.Millisecond,
		MaxBodyBytes:   1 << 20,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, err := io.ReadAll(r.Body)
			readErr <- err
		}),
	})
	c := dial(t, ts.addr)
	io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part")
	select {
	case err := <-readErr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("reading a stalled body ended with %v, want the deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a stalled body was still being read after 10s with RequestTimeout 200ms")
	}
}

func TestRequestTimeoutCutsAReaderThatStalls(t *testing.T) {
	writeErr := make(chan error, 1)
	ts := startServer(t, Options{
		RequestTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			chunk := make([]byte, 64<<10)
			for range 4096 { // 256 MiB, far more than the socket buffers hold
				if _, err := w.Write(chunk); err != nil {
					writeErr <- err
					return
				}
			}
			writeErr <- nil
		}),
	})
	c := dial(t, ts.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // and never read the answer
	select {
	case err := <-writeErr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("writing to a client that reads nothing ended with %v, want the deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still writing to a client that reads nothing after 10s with RequestTimeout 200ms")
	}
}

func TestExtendDeadline(t *testing.T) {
	readErr := make(chan error, 1)
	ts := startServer(t, Options{
		RequestTimeout: 100 * time.Millisecond,
		MaxBodyBytes:   1 << 20,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Like the emulator's injected latency: longer than the
			// request's deadline, then re-armed before the body is read.
			time.Sleep(300 * time.Millisecond)
			ExtendDeadline(w, 10*time.Second)
			_, err := io.ReadAll(r.Body)
			readErr <- err
		}),
	})
	c := dial(t, ts.addr)
	io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
	time.Sleep(200 * time.Millisecond) // the body arrives after the first deadline passed
	io.WriteString(c, "body")
	if err := <-readErr; err != nil {
		t.Fatalf("the body read after ExtendDeadline failed: %v", err)
	}
	if resp, _ := c.read(t); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestHeaderLimit(t *testing.T) {
	ts := startServer(t, Options{Handler: okHandler(), MaxHeaderBytes: 1 << 10})
	for _, tc := range []struct {
		name   string
		header int
		want   int
	}{
		{"small", 100, 200},
		// net/http allows 4096 bytes of slack over MaxHeaderBytes.
		{"over the limit", 8 << 10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts.addr)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("a", tc.header)+"\r\n\r\n")
			// Only the status: the server closes the connection on the
			// unread headers, which may reset it before the body is read.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestBodyLimit(t *testing.T) {
	var mu sync.Mutex
	var gotErr error
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		mu.Lock()
		gotErr = err
		mu.Unlock()
		if err != nil {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
		}
	})
	noBody := startServer(t, Options{Handler: handler, MaxBodyBytes: 0})
	limited := startServer(t, Options{Handler: handler, MaxBodyBytes: 100})
	for _, tc := range []struct {
		name string
		ts   *testServer
		req  string
		want int
	}{
		{"no body allowed, none sent", noBody, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200},
		{"no body allowed, one declared", noBody, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413},
		{"no body allowed, chunked", noBody, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 413},
		{"within the limit", limited, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("a", 100), 200},
		{"declared over the limit", limited, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + strings.Repeat("a", 101), 413},
		{"chunked over the limit", limited, "PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", 150, strings.Repeat("a", 150)), 413},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, tc.ts.addr)
			io.WriteString(c, tc.req)
			if resp, _ := c.read(t); resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	var mbe *http.MaxBytesError
	if !errors.As(gotErr, &mbe) {
		t.Errorf("the chunked body over the limit was read with %v, want a MaxBytesError", gotErr)
	}
}

func TestIdleConnsClosedAtCap(t *testing.T) {
	const capConns = 4
	ts := startServer(t, Options{Handler: okHandler(), MaxConns: capConns, IdleTimeout: time.Hour})
	// A flood of keep-alive connections, each left idle after one request:
	// more than the cap, each one admitted by closing an older one.
	var flood []*rawConn
	for i := range 3 * capConns {
		c := dial(t, ts.addr)
		if resp, _ := c.get(t, "/"); resp.StatusCode != 200 {
			t.Fatalf("flood connection %d: status %d", i, resp.StatusCode)
		}
		flood = append(flood, c)
	}
	if st := ts.ll.stats(); st.Held > capConns {
		t.Fatalf("%d connections held, cap %d", st.Held, capConns)
	}
	// A real client still gets through, at once.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + ts.addr + "/")
	if err != nil {
		t.Fatalf("a client behind the flood: %v", err)
	}
	resp.Body.Close()
	closed := 0
	for _, c := range flood {
		if c.closedByServer(100 * time.Millisecond) {
			closed++
		}
	}
	st := ts.ll.stats()
	t.Logf("flood of %d idle connections at a cap of %d: %d closed by the server, %d evictions", len(flood), capConns, closed, st.Evicted)
	if closed < len(flood)-capConns+1 {
		t.Errorf("only %d of %d idle flood connections were closed; the cap is %d", closed, len(flood), capConns)
	}
	// The oldest go first: the first flood connection is one of them.
	if !flood[0].closedByServer(10 * time.Millisecond) {
		t.Error("the longest idle connection is still open")
	}
}

func TestBusyConnsAreWaitedFor(t *testing.T) {
	const capConns = 4
	release := make(chan struct{})
	entered := make(chan struct{}, capConns+1)
	ts := startServer(t, Options{MaxConns: capConns, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	})})
	var busy []*rawConn
	for range capConns {
		c := dial(t, ts.addr)
		io.WriteString(c, "GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
		busy = append(busy, c)
	}
	for range capConns {
		<-entered
	}
	// Every slot is busy: a newcomer is accepted and waits, never is a
	// request in progress cut.
	got := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Get("http://" + ts.addr + "/")
		if err == nil {
			resp.Body.Close()
		}
		got <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for ts.ll.stats().Waiting == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the newcomer never waited for a slot")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-got:
		t.Fatalf("the newcomer was answered while every slot was busy: %v", err)
	default:
	}
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("the newcomer once a slot freed: %v", err)
	}
	for i, c := range busy {
		if resp, _ := c.read(t); resp.StatusCode != 200 {
			t.Errorf("busy request %d: status %d", i, resp.StatusCode)
		}
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestSilentConnsClosedAtCapAfterGrace(t *testing.T) {
	const capConns = 2
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	ts := startServerClock(t, Options{Handler: okHandler(), MaxConns: capConns}, clock.now)
	var silent []*rawConn
	for i := range capConns {
		silent = append(silent, dial(t, ts.addr))
		deadline := time.Now().Add(10 * time.Second)
		for ts.ll.stats().Held < i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("silent connection %d was not accepted", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Each one a little older than the next, so "oldest" is defined.
		clock.advance(time.Millisecond)
	}
	clock.advance(newConnGrace)
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + ts.addr + "/")
	if err != nil {
		t.Fatalf("a client behind silent connections past their grace: %v", err)
	}
	resp.Body.Close()
	if !silent[0].closedByServer(5 * time.Second) {
		t.Error("the oldest silent connection is still open")
	}
}

func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, Options{Handler: okHandler()}) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}
