package emulator

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzEmulatorRequest sends arbitrary requests straight into ServeHTTP. The
// emulator stands in for Cloudflare in every kvsync test, so whatever a buggy
// client (or a fuzzer) sends must get an answer a client can classify: never
// a panic, a status in 200..599, and either Cloudflare's JSON envelope (which
// says success exactly when the status is 2xx and names an error otherwise)
// or, for a value read only, the raw value.
func FuzzEmulatorRequest(f *testing.F) {
	const base = PathPrefix + "/accounts/acct/storage/kv/namespaces/ns"
	seeds := []struct {
		method      uint8
		path, query string
		body        []byte
		ctype       uint8
		auth        uint8
	}{
		{1, base + "/values/k", "", []byte("value"), 0, 0},
		{1, base + "/values/k", "expiration_ttl=60", []byte("v"), 0, 0},
		{1, base + "/values/k", "expiration_ttl=59", []byte("v"), 0, 0},
		{1, base + "/values/a%2Fb", "expiration=1", []byte("v"), 0, 0},
		{1, base + "/values/k", "", []byte("--x\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nv\r\n--x\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{\"a\":1}\r\n--x--\r\n"), 2, 0},
		{1, base + "/values/k", "", []byte("--x\r\n--x--"), 2, 0},
		{0, base + "/values/k", "", nil, 0, 0},
		{0, base + "/metadata/k", "", nil, 0, 0},
		{0, base + "/values/%zz", "", nil, 0, 0},
		{0, base + "/values/..", "", nil, 0, 0},
		{0, base + "/keys", "limit=5&prefix=a&cursor=zzz", nil, 0, 0},
		{0, base + "/keys", "limit=abc", nil, 0, 0},
		{1, base + "/bulk", "", []byte(`[{"key":"a","value":"b","metadata":{"x":1},"expiration_ttl":120},{"key":"c","value":"ZGF0YQ==","base64":true}]`), 1, 0},
		{1, base + "/bulk", "", []byte(`[{"key":"","value":"b"}]`), 1, 0},
		{1, base + "/bulk", "", []byte(`{"not":"an array"}`), 1, 0},
		{1, base + "/bulk", "", []byte(`[{"key":"a","value":"%%%","base64":true}]`), 1, 0},
		{2, base + "/bulk/delete", "", []byte(`["a","c"]`), 1, 0},
		{3, base + "/bulk", "", []byte(`["a"]`), 1, 0},
		{3, base + "/values/k", "", nil, 0, 0},
		{0, PathPrefix + "/accounts/acct/storage/kv/namespaces", "", nil, 0, 0},
		{2, PathPrefix + "/accounts/acct/storage/kv/namespaces", "", []byte(`{"title":"t"}`), 1, 0},
		{1, base, "", []byte(`{"title":"renamed"}`), 1, 0},
		{3, base, "", nil, 0, 0},
		{0, PathPrefix + "/user/tokens/verify", "", nil, 0, 0},
		{0, base + "/values/k", "", nil, 0, 1},
		{0, base + "/values/k", "", nil, 0, 2},
		{4, base + "/values/k", "", nil, 0, 0},
		{5, "/elsewhere", "", nil, 0, 0},
		{6, base + "/values/k", "", []byte("x"), 3, 3},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.query, s.body, s.ctype, s.auth)
	}
	em, err := New(Options{Token: "fuzz-token"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { em.Close() })
	methods := []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch, http.MethodHead, "BREW"}
	ctypes := []string{"", "application/json", "multipart/form-data; boundary=x", "multipart/form-data"}

	f.Fuzz(func(t *testing.T, method uint8, path, query string, body []byte, ctype, auth uint8) {
		u, err := url.Parse("http://127.0.0.1" + path)
		if err != nil || u.Host != "127.0.0.1" {
			t.Skip("not a request target a client could send")
		}
		u.RawQuery = query
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/", bytes.NewReader(body))
		req.Method = methods[int(method)%len(methods)]
		req.URL = u
		req.RequestURI = u.RequestURI()
		req.ContentLength = int64(len(body))
		if ct := ctypes[int(ctype)%len(ctypes)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		switch auth % 4 {
		case 0:
			req.Header.Set("Authorization", "Bearer fuzz-token")
		case 1:
			req.Header.Set("Authorization", "Bearer wrong")
		case 2: // no credentials at all
		case 3:
			req.Header.Set("X-Auth-Email", "a@example.com")
			req.Header.Set("X-Auth-Key", "fuzz-token")
		}

		rec := httptest.NewRecorder()
		em.ServeHTTP(rec, req)
		res := rec.Result()
		got, _ := io.ReadAll(res.Body)
		if res.StatusCode < 200 || res.StatusCode > 599 {
			t.Fatalf("%s %s?%s: status %d", req.Method, path, query, res.StatusCode)
		}
		if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
			var env struct {
				Success *bool             `json:"success"`
				Errors  []json.RawMessage `json:"errors"`
				Result  json.RawMessage   `json:"result"`
			}
			if err := json.Unmarshal(got, &env); err != nil {
				t.Fatalf("%s %s?%s: status %d with a JSON content type but body %q: %v", req.Method, path, query, res.StatusCode, got, err)
			}
			if env.Success == nil || env.Errors == nil {
				t.Fatalf("%s %s?%s: envelope lacks success or errors: %s", req.Method, path, query, got)
			}
			ok := res.StatusCode < 300
			if *env.Success != ok {
				t.Fatalf("%s %s?%s: status %d but success:%v: %s", req.Method, path, query, res.StatusCode, *env.Success, got)
			}
			if !ok && len(env.Errors) == 0 {
				t.Fatalf("%s %s?%s: failure %d names no error: %s", req.Method, path, query, res.StatusCode, got)
			}
			return
		}
		// Only a successful value read answers with something other than an
		// envelope: the raw bytes.
		if res.StatusCode != http.StatusOK || req.Method != http.MethodGet || !strings.Contains(u.EscapedPath(), "/values/") {
			t.Fatalf("%s %s?%s: status %d, content type %q, body %q: neither an envelope nor a value read",
				req.Method, path, query, res.StatusCode, res.Header.Get("Content-Type"), got)
		}
	})
}
