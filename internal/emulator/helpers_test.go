package emulator

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injected clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testEnvelope is the test's own reading of Cloudflare's envelope.
type testEnvelope struct {
	Success bool `json:"success"`
	Errors  []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
	Messages   []json.RawMessage `json:"messages"`
	Result     json.RawMessage   `json:"result"`
	ResultInfo json.RawMessage   `json:"result_info"`
}

type response struct {
	status int
	header http.Header
	body   []byte
	env    testEnvelope
}

func (r response) code() int {
	if len(r.env.Errors) == 0 {
		return 0
	}
	return r.env.Errors[0].Code
}

type harness struct {
	t     testing.TB
	e     *Emulator
	srv   *httptest.Server
	clock *fakeClock
}

const (
	testAccount = "acc0123456789abcdef0123456789ab"
	testNS      = "ns00123456789abcdef0123456789ab"
)

func newHarness(t testing.TB, opts Options) *harness {
	t.Helper()
	clock := newFakeClock()
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	e, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(func() {
		srv.Close()
		e.Close()
	})
	return &harness{t: t, e: e, srv: srv, clock: clock}
}

// nsURL is the namespace's URL; rest is appended verbatim (already escaped).
func (h *harness) nsURL(rest string) string {
	return h.srv.URL + PathPrefix + "/accounts/" + testAccount + "/storage/kv/namespaces/" + testNS + rest
}

func valuesURL(h *harness, key string) string { return h.nsURL("/values/" + url.PathEscape(key)) }

// do sends a request with a Bearer token unless headers set credentials.
func (h *harness) do(method, u string, body []byte, headers ...string) response {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		h.t.Fatalf("NewRequest %s %s: %v", method, u, err)
	}
	auth := true
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Authorization" || headers[i] == "X-Auth-Email" || headers[i] == "X-Auth-Key" || headers[i] == "NoAuth" {
			auth = false
		}
		if headers[i] != "NoAuth" {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	if auth {
		req.Header.Set("Authorization", "Bearer test-token")
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: reading body: %v", method, u, err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, body: b}
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(b, &r.env); err != nil {
			h.t.Fatalf("%s %s: undecodable envelope %q: %v", method, u, b, err)
		}
	}
	return r
}

// curlForm builds the body curl -F sends: plain form fields, no per-part
// Content-Type.
func curlForm(t testing.TB, fields ...string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		hdr := textproto.MIMEHeader{}
		hdr.Set("Content-Disposition", `form-data; name="`+fields[i]+`"`)
		pw, err := mw.CreatePart(hdr)
		if err != nil {
			t.Fatal(err)
		}
		pw.Write([]byte(fields[i+1]))
	}
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// listPage is the test's reading of a list-keys result.
type listPage struct {
	Keys []struct {
		Name       string          `json:"name"`
		Expiration int64           `json:"expiration"`
		Metadata   json.RawMessage `json:"metadata"`
	}
	Count  int
	Cursor string
}

func (h *harness) list(query string) (listPage, response) {
	h.t.Helper()
	r := h.do("GET", h.nsURL("/keys"+query), nil)
	var p listPage
	if r.status != 200 {
		return p, r
	}
	if err := json.Unmarshal(r.env.Result, &p.Keys); err != nil {
		h.t.Fatalf("list result %s: %v", r.env.Result, err)
	}
	var info struct {
		Count  int     `json:"count"`
		Cursor *string `json:"cursor"`
	}
	if err := json.Unmarshal(r.env.ResultInfo, &info); err != nil || info.Cursor == nil {
		h.t.Fatalf("list result_info %s: %v (cursor must be present)", r.env.ResultInfo, err)
	}
	p.Count, p.Cursor = info.Count, *info.Cursor
	return p, r
}
