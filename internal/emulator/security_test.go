package emulator

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/httpserve"
)

func TestHealthNeedsNoCredentials(t *testing.T) {
	h := newHarness(t, Options{Token: "s3cret", Faults: Faults{Budget: 1, ServerErrorRate: 1}})
	for range 3 {
		r := h.do("GET", h.srv.URL+HealthPath, nil, "NoAuth", "")
		if r.status != 200 || string(r.body) != "ok\n" {
			t.Fatalf("GET %s: %d %q", HealthPath, r.status, r.body)
		}
	}
	if r := h.do("POST", h.srv.URL+HealthPath, nil, "NoAuth", ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %d", HealthPath, r.status)
	}
	if len(h.e.Counts()) != 0 {
		t.Errorf("health checks were counted: %v", h.e.Counts())
	}
}

func TestStatsRequiresCredentials(t *testing.T) {
	for _, tc := range []struct {
		name     string
		token    string
		headers  []string
		want     int
		wantCode int
	}{
		{"none, no token configured", "", []string{"NoAuth", ""}, 400, 9106},
		{"any bearer, no token configured", "", []string{"Authorization", "Bearer whatever"}, 200, 0},
		{"none, token configured", "s3cret", []string{"NoAuth", ""}, 400, 9106},
		{"wrong token", "s3cret", []string{"Authorization", "Bearer nope"}, 403, 10000},
		{"wrong key", "s3cret", []string{"X-Auth-Email", "a@b.c", "X-Auth-Key", "nope"}, 403, 10000},
		{"right token", "s3cret", []string{"Authorization", "Bearer s3cret"}, 200, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{Token: tc.token})
			if r := h.do("PUT", valuesURL(h, "k"), []byte("v"), "Authorization", "Bearer "+cmpOr(tc.token, "x")); r.status != 200 {
				t.Fatalf("seeding a write: %d", r.status)
			}
			r := h.do("GET", h.srv.URL+StatsPath+"?account="+testAccount+"&namespace="+testNS, nil, tc.headers...)
			if r.status != tc.want {
				t.Fatalf("status %d %s, want %d", r.status, r.body, tc.want)
			}
			if tc.want != 200 {
				if r.code() != tc.wantCode || strings.Contains(string(r.body), `"requests"`) {
					t.Errorf("refused stats answer %s, want code %d and no counters", r.body, tc.wantCode)
				}
				return
			}
			var st Stats
			if err := json.Unmarshal(r.body, &st); err != nil || st.Namespace == nil || st.Namespace.Keys != 1 {
				t.Errorf("stats %s (%v)", r.body, err)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestUnauthenticatedRequestsAreNotCharged: requests without valid
// credentials are answered before the budget and the injected faults, so
// they can neither spend the real client's budget nor be told anything but
// that their credentials are wrong.
func TestUnauthenticatedRequestsAreNotCharged(t *testing.T) {
	h := newHarness(t, Options{Token: "s3cret", Faults: Faults{Budget: 3, BudgetWindow: time.Minute}})
	bad := [][]string{
		{"NoAuth", ""},
		{"Authorization", "Bearer wrong"},
		{"Authorization", "Basic dXNlcjpwYXNz"},
		{"X-Auth-Email", "a@b.c", "X-Auth-Key", "wrong"},
		{"X-Auth-Email", "a@b.c"},
	}
	for i := range 10 {
		hdr := bad[i%len(bad)]
		if r := h.do("PUT", valuesURL(h, "k"), []byte("v"), hdr...); r.status != 400 && r.status != 403 {
			t.Fatalf("unauthenticated request %d (%v): %d %s", i, hdr, r.status, r.body)
		}
	}
	for i := range 3 {
		if r := h.do("PUT", valuesURL(h, "k"), []byte("v"), "Authorization", "Bearer s3cret"); r.status != 200 {
			t.Fatalf("authenticated request %d after 10 unauthenticated ones, budget 3: %d %s", i, r.status, r.body)
		}
	}
	// The budget is the client's own: its fourth request is over it.
	if r := h.do("PUT", valuesURL(h, "k"), []byte("v"), "Authorization", "Bearer s3cret"); r.status != 429 || r.code() != 971 {
		t.Fatalf("the client's fourth request, budget 3: %d %s", r.status, r.body)
	}

	h.e.SetFaults(Faults{ServerErrorRate: 1, DropRate: 0})
	if r := h.do("GET", valuesURL(h, "k"), nil, "Authorization", "Bearer wrong"); r.status != 403 {
		t.Errorf("an unauthenticated request met an injected fault: %d", r.status)
	}
}

// TestTokenComparison pins the answers to near misses; the comparison
// itself is crypto/subtle's over SHA-256 digests (tokenMatches), so its
// time does not depend on how much of the token a guess got right.
func TestTokenComparison(t *testing.T) {
	const token = "s3cret-token"
	h := newHarness(t, Options{Token: token})
	for _, tc := range []struct {
		name, cred string
		want       int
	}{
		{"exact", token, 200},
		{"prefix", token[:len(token)-1], 403},
		{"longer", token + "x", 403},
		{"last byte differs", token[:len(token)-1] + "X", 403},
		{"first byte differs", "S" + token[1:], 403},
		{"case differs", strings.ToUpper(token), 403},
		{"one character", "s", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, hdr := range [][]string{
				{"Authorization", "Bearer " + tc.cred},
				{"X-Auth-Email", "a@b.c", "X-Auth-Key", tc.cred},
			} {
				if r := h.do("GET", valuesURL(h, "k"), nil, hdr...); (r.status == 200 || r.status == 404) != (tc.want == 200) {
					t.Errorf("%s: %d %s", hdr[0], r.status, r.body)
				}
			}
		})
	}
}

func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("token", "from-file\n", 0o600)
	empty := write("empty", " \n", 0o600)
	twoLines := write("two", "a\nb\n", 0o600)
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == TokenEnv {
				return v
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name    string
		src     TokenSources
		want    string
		wantErr bool
	}{
		{"nothing", TokenSources{Getenv: env("")}, "", false},
		{"environment", TokenSources{Getenv: env("from-env")}, "from-env", false},
		{"file", TokenSources{File: good, Getenv: env("from-env")}, "from-file", false},
		{"flag", TokenSources{Flag: "from-flag", Getenv: env("from-env")}, "from-flag", false},
		{"flag and file", TokenSources{Flag: "f", File: good}, "", true},
		{"missing file", TokenSources{File: filepath.Join(dir, "nope")}, "", true},
		{"empty file", TokenSources{File: empty}, "", true},
		{"two lines", TokenSources{File: twoLines}, "", true},
		{"a directory", TokenSources{File: dir}, "", true},
		{"space in the environment", TokenSources{Getenv: env("a b")}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveToken(tc.src)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ResolveToken = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrBadToken) {
				t.Errorf("error %v is not ErrBadToken", err)
			}
		})
	}
}

func TestTokenFileReadableByOthersWarns(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("tok"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	got, err := ResolveToken(TokenSources{File: p, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil || got != "tok" {
		t.Fatalf("ResolveToken = %q, %v", got, err)
	}
	if !strings.Contains(logs.String(), "readable by group or others") {
		t.Errorf("no warning for a 0644 token file: %q", logs.String())
	}
}

// bulkUpload is a chunked bulk write whose body the test feeds by hand.
type bulkUpload struct {
	pw   *io.PipeWriter
	done chan bulkAnswer
}

type bulkAnswer struct {
	status     int
	code       int
	retryAfter string
	err        error
}

// startBulk sends a bulk write of one key and stops mid-body.
func startBulk(h *harness, key string) *bulkUpload {
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", h.nsURL("/bulk"), pr)
	req.Header.Set("Authorization", "Bearer t")
	req.Header.Set("Content-Type", "application/json")
	u := &bulkUpload{pw: pw, done: make(chan bulkAnswer, 1)}
	// Before the server closes (cleanups run last first): a failing test
	// must not leave handlers waiting for bodies that never come.
	h.t.Cleanup(func() { pw.CloseWithError(errors.New("test ended")) })
	go func() {
		resp, err := h.srv.Client().Do(req)
		if err != nil {
			u.done <- bulkAnswer{err: err}
			return
		}
		defer resp.Body.Close()
		var env testEnvelope
		json.NewDecoder(resp.Body).Decode(&env)
		a := bulkAnswer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		if len(env.Errors) > 0 {
			a.code = env.Errors[0].Code
		}
		u.done <- a
	}()
	go pw.Write([]byte(`[{"key":"` + key + `","value":"v"}`))
	return u
}

// answer waits up to 10 s for the request's answer.
func (u *bulkUpload) answer(t *testing.T) bulkAnswer {
	t.Helper()
	select {
	case a := <-u.done:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to a bulk request after 10s")
	}
	return bulkAnswer{}
}

func (u *bulkUpload) finish() {
	u.pw.Write([]byte(`]`))
	u.pw.Close()
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBulkBodiesBounded(t *testing.T) {
	const limit, held = 1000, 2
	for _, tc := range []struct {
		name    string
		timeout time.Duration
	}{
		{"queued until room frees", time.Minute},
		{"refused after the queue timeout", 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			h.e.maxBulkBytes = limit
			// Room for two bodies of unknown length (chunked).
			h.e.bodies = newBodyGate(held*(limit+1), tc.timeout)
			var open []*bulkUpload
			for i := range held {
				open = append(open, startBulk(h, string(rune('a'+i))))
			}
			waitFor(t, "the first bulk bodies did not take their room", func() bool { return h.e.bodies.reserved.Load() == held*(limit+1) })
			extra := startBulk(h, "extra")
			if tc.timeout < time.Second {
				a := extra.answer(t)
				if a.err != nil || a.status != http.StatusServiceUnavailable || a.code != 10001 || a.retryAfter != "1" {
					t.Fatalf("over the bound: %+v, want 503 code 10001 Retry-After 1", a)
				}
			} else {
				waitFor(t, "the extra bulk request did not queue", func() bool { return h.e.bodies.waiting.Load() == 1 })
				select {
				case a := <-extra.done:
					t.Fatalf("the extra bulk request was answered while the room was full: %+v", a)
				default:
				}
				open[0].finish()
				if a := open[0].answer(t); a.status != 200 {
					t.Fatalf("first bulk: %+v", a)
				}
				extra.finish()
				if a := extra.answer(t); a.status != 200 {
					t.Fatalf("the queued bulk request once room freed: %+v", a)
				}
				open = open[1:]
			}
			for _, u := range open {
				u.finish()
				if a := u.answer(t); a.status != 200 {
					t.Fatalf("held bulk: %+v", a)
				}
			}
			if r := h.e.bodies.reserved.Load(); r != 0 {
				t.Errorf("%d bytes still reserved after every request ended", r)
			}
		})
	}
}

func TestBulkDeclaredTooLargeIsRefusedUnread(t *testing.T) {
	h := newHarness(t, Options{})
	h.e.maxBulkBytes = 1000
	h.e.bodies = newBodyGate(1001, time.Minute)
	c, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	path := strings.TrimPrefix(h.nsURL("/bulk"), h.srv.URL)
	// Headers only: the 413 must come without the body being sent.
	io.WriteString(c, "PUT "+path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestServerLimits serves the emulator as ListenAndServe does (with a
// lower connection cap, to flood it cheaply).
func TestServerLimits(t *testing.T) {
	e, err := New(Options{Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := serverOptions(e, slog.New(slog.DiscardHandler))
	o.MaxConns = 8
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpserve.Serve(ctx, ln, o) }()
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()
	base := "http://" + addr + PathPrefix + "/accounts/" + testAccount + "/storage/kv/namespaces/" + testNS

	exchange := func(t *testing.T, req string) (net.Conn, *bufio.Reader, *http.Response, testEnvelope) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		var env testEnvelope
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		json.Unmarshal(b, &env)
		return c, br, resp, env
	}
	path := strings.TrimPrefix(base, "http://"+addr)

	t.Run("headers over the limit", func(t *testing.T) {
		_, _, resp, _ := exchange(t, "GET "+HealthPath+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("a", maxHeaderBytes+8<<10)+"\r\n\r\n")
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("body over any route's limit", func(t *testing.T) {
		_, _, resp, env := exchange(t, "PUT "+path+"/values/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 200000000\r\n\r\n")
		if resp.StatusCode != http.StatusRequestEntityTooLarge || len(env.Errors) == 0 || env.Errors[0].Code != 10024 {
			t.Fatalf("status %d %+v, want 413 in an envelope with code 10024", resp.StatusCode, env)
		}
	})
	t.Run("idle flood", func(t *testing.T) {
		var flood []*bufio.Reader
		var conns []net.Conn
		for range 4 * o.MaxConns {
			c, br, resp, _ := exchange(t, "GET "+HealthPath+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 {
				t.Fatalf("flood request: %d", resp.StatusCode)
			}
			flood, conns = append(flood, br), append(conns, c)
		}
		req, _ := http.NewRequest("PUT", base+"/values/behind-the-flood", strings.NewReader("v"))
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("a client behind %d idle connections: %v", len(flood), err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("a client behind the flood: %d", resp.StatusCode)
		}
		closed := 0
		for i, br := range flood {
			conns[i].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			_, err := br.ReadByte()
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				closed++
			}
		}
		if closed < len(flood)-o.MaxConns {
			t.Errorf("%d of %d idle connections closed; at most %d may stay open", closed, len(flood), o.MaxConns)
		}
	})
}
