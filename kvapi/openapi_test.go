package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/kvsync/kvsync/api/openapi"
)

// conformanceServer validates every request against the OpenAPI schema and
// answers like a minimal KV API; invalid requests get a 400 whose message
// is the validation error, so a client call fails loudly.
type conformanceServer struct {
	srv    *httptest.Server
	router routers.Router

	mu       sync.Mutex
	ops      map[string]int // operationId -> requests validated
	failures []string
}

func newConformanceServer(t *testing.T) *conformanceServer {
	t.Helper()
	doc, err := openapi.Load()
	if err != nil {
		t.Fatal(err)
	}
	cs := &conformanceServer{ops: map[string]int{}}
	cs.srv = httptest.NewServer(http.HandlerFunc(cs.serve))
	t.Cleanup(cs.srv.Close)
	// The schema's server is https://api.cloudflare.com/client/v4; keep its
	// base path, swap in the test server's origin.
	doc.Servers = openapi3.Servers{{URL: cs.srv.URL + "/client/v4"}}
	if cs.router, err = gorillamux.NewRouter(doc); err != nil {
		t.Fatalf("router: %v", err)
	}
	return cs
}

// authenticate checks that the headers of the security scheme are present;
// the schema's alternatives are api_token, or api_email plus api_key.
func authenticate(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	r := in.RequestValidationInput.Request
	switch in.SecuritySchemeName {
	case "api_token":
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); !ok || tok == "" {
			return errors.New("no bearer token")
		}
	case "api_email":
		if r.Header.Get("X-Auth-Email") == "" {
			return errors.New("no X-Auth-Email")
		}
	case "api_key":
		if r.Header.Get("X-Auth-Key") == "" {
			return errors.New("no X-Auth-Key")
		}
	default:
		return fmt.Errorf("scheme %s not accepted", in.SecuritySchemeName)
	}
	return nil
}

func (cs *conformanceServer) serve(w http.ResponseWriter, r *http.Request) {
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf("%s %s: ", r.Method, r.URL.RequestURI()) + fmt.Sprintf(format, args...)
		cs.mu.Lock()
		cs.failures = append(cs.failures, msg)
		cs.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusBadRequest)
		body, _ := json.Marshal(map[string]any{"success": false, "errors": []map[string]any{{"code": 10029, "message": msg}}})
		w.Write(body)
	}
	route, params, err := cs.router.FindRoute(r)
	if err != nil {
		fail("no route: %v", err)
		return
	}
	in := &openapi3filter.RequestValidationInput{
		Request:    r,
		PathParams: params,
		Route:      route,
		Options: &openapi3filter.Options{
			MultiError:                        true,
			AuthenticationFunc:                authenticate,
			RejectWhenRequestBodyNotSpecified: true,
		},
	}
	if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
		fail("%v", err)
		return
	}
	opID := route.Operation.OperationID
	cs.mu.Lock()
	cs.ops[opID]++
	cs.mu.Unlock()
	io.Copy(io.Discard, r.Body)
	switch opID {
	case "workers-kv-namespace-read-key-value-pair":
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Expiration", "1900000000")
		io.WriteString(w, "value\x00\xff")
	case "workers-kv-namespace-read-the-metadata-for-a-key":
		writeOK(w, `{"m":1}`)
	case "workers-kv-namespace-list-a-namespace'-s-keys":
		if r.URL.Query().Get("cursor") == "" {
			io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":[{"name":"p/a","metadata":{"x":1}}],"result_info":{"count":1,"cursor":"next"}}`)
		} else {
			io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":[{"name":"p/b","expiration":1900000000}],"result_info":{"count":1,"cursor":""}}`)
		}
	case "workers-kv-namespace-write-multiple-key-value-pairs", "workers-kv-namespace-delete-multiple-key-value-pairs":
		writeOK(w, `{"successful_key_count":3,"unsuccessful_keys":[]}`)
	default:
		writeOK(w, "null")
	}
}

func (cs *conformanceServer) client(t *testing.T, legacy bool) *Client {
	t.Helper()
	opts := Options{
		BaseURL:    cs.srv.URL + "/client/v4/",
		AccountID:  testAccount,
		HTTPClient: cs.srv.Client(),
		UserAgent:  "kvsync/test",
		Now:        func() time.Time { return testNow },
	}
	if legacy {
		opts.Email, opts.APIKey = "me@example.com", "legacy-key"
	} else {
		opts.Token = testToken
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestOpenAPIConformance drives every operation of the client through a
// server that validates each request against the vendored OpenAPI schema.
func TestOpenAPIConformance(t *testing.T) {
	cs := newConformanceServer(t)
	ctx := context.Background()
	c := cs.client(t, false)
	legacy := cs.client(t, true)
	nasty := "dir/sub dir/ключ?.txt#1%"
	steps := []struct {
		name string
		run  func() error
	}{
		{"put plain", func() error { return c.PutValue(ctx, testNS, "plain", Bytes([]byte("hello")), PutOptions{}) }},
		{"put empty value", func() error { return c.PutValue(ctx, testNS, "empty", Bytes(nil), PutOptions{}) }},
		{"put binary with metadata", func() error {
			return c.PutValue(ctx, testNS, nasty, Bytes([]byte{0, 0xff, '\r', '\n'}), PutOptions{Metadata: json.RawMessage(`{"a": [1, {"b": null}]}`)})
		}},
		{"put with ttl", func() error {
			return c.PutValue(ctx, testNS, "ttl", Bytes([]byte("x")), PutOptions{ExpirationTTL: 60})
		}},
		{"put with expiration", func() error {
			return c.PutValue(ctx, testNS, "exp", Bytes([]byte("x")), PutOptions{Expiration: testNow.Unix() + 60, Metadata: json.RawMessage(`{}`)})
		}},
		{"put generated 1 MiB", func() error {
			return c.PutValue(ctx, testNS, "gen", genValue{size: 1 << 20}, PutOptions{ExpirationTTL: 86400})
		}},
		{"put legacy auth", func() error { return legacy.PutValue(ctx, testNS, "legacy", Bytes([]byte("x")), PutOptions{}) }},
		{"bulk put", func() error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{
				{Key: "text", Value: []byte("quote\" nl\n é")},
				{Key: "binary", Value: []byte{0xff, 0xfe, 0, 1}, Metadata: json.RawMessage(`{"type":"bin"}`), ExpirationTTL: 60},
				{Key: nasty, Value: nil, Expiration: testNow.Unix() + 3600},
			})
			return err
		}},
		{"delete", func() error { return c.DeleteValue(ctx, testNS, nasty) }},
		{"delete legacy auth", func() error { return legacy.DeleteValue(ctx, testNS, "legacy") }},
		{"bulk delete", func() error {
			_, err := c.BulkDelete(ctx, testNS, []string{"text", "binary", nasty})
			return err
		}},
		{"list with prefix, limit and cursor", func() error {
			page, err := c.ListKeys(ctx, testNS, ListOptions{Prefix: "p/", Limit: 10, Cursor: "abc"})
			if err == nil && len(page.Keys) != 1 {
				err = fmt.Errorf("page %+v", page)
			}
			return err
		}},
		{"list all", func() error {
			var n int
			err := ListAll(ctx, c, testNS, "p/", func(KeyInfo) error { n++; return nil })
			if err == nil && n != 2 {
				err = fmt.Errorf("listed %d keys, want 2", n)
			}
			return err
		}},
		{"get value", func() error {
			v, err := c.GetValue(ctx, testNS, nasty)
			if err == nil && (string(v.Value) != "value\x00\xff" || v.Expiration != 1900000000) {
				err = fmt.Errorf("got %+v", v)
			}
			return err
		}},
		{"get metadata", func() error {
			m, err := c.GetMetadata(ctx, testNS, nasty)
			if err == nil && string(m) != `{"m":1}` {
				err = fmt.Errorf("got %s", m)
			}
			return err
		}},
	}
	for _, s := range steps {
		if err := s.run(); err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, f := range cs.failures {
		t.Errorf("schema violation: %s", f)
	}
	for _, op := range []string{
		"workers-kv-namespace-write-key-value-pair-with-metadata",
		"workers-kv-namespace-write-multiple-key-value-pairs",
		"workers-kv-namespace-delete-key-value-pair",
		"workers-kv-namespace-delete-multiple-key-value-pairs",
		"workers-kv-namespace-list-a-namespace'-s-keys",
		"workers-kv-namespace-read-key-value-pair",
		"workers-kv-namespace-read-the-metadata-for-a-key",
	} {
		if cs.ops[op] == 0 {
			t.Errorf("operation %s was never exercised", op)
		}
	}
}

// TestOpenAPIValidatorRejects proves the conformance server can fail: it
// refuses requests the client never sends.
func TestOpenAPIValidatorRejects(t *testing.T) {
	cs := newConformanceServer(t)
	base := cs.srv.URL + "/client/v4/accounts/" + testAccount + "/storage/kv/namespaces/" + testNS
	multipartBody := func() (string, []byte) {
		f, _ := newMultipartFrame(nil)
		return f.contentType, append(append(append([]byte{}, f.head...), "v"...), f.tail...)
	}
	ct, mp := multipartBody()
	cases := []struct {
		name, method, url, contentType string
		body                           []byte
		noAuth                         bool
	}{
		{"expiration_ttl 30", http.MethodPut, base + "/values/k?expiration_ttl=30", ct, mp, false},
		{"expiration not a number", http.MethodPut, base + "/values/k?expiration=soon", ct, mp, false},
		{"no credentials", http.MethodPut, base + "/values/k", ct, mp, true},
		{"put without value part", http.MethodPut, base + "/values/k", ct, []byte("--" + strings.TrimPrefix(ct, "multipart/form-data; boundary=") + "--\r\n"), false},
		{"put without body", http.MethodPut, base + "/values/k", "", nil, false},
		{"bulk pair without key", http.MethodPut, base + "/bulk", "application/json", []byte(`[{"value":"v"}]`), false},
		{"bulk metadata as a string", http.MethodPut, base + "/bulk", "application/json", []byte(`[{"key":"k","value":"v","metadata":"{}"}]`), false},
		{"bulk delete of objects", http.MethodPost, base + "/bulk/delete", "application/json", []byte(`[{"key":"k"}]`), false},
		{"list limit 5", http.MethodGet, base + "/keys?limit=5", "", nil, false},
		{"delete with a body", http.MethodDelete, base + "/values/k", "application/json", []byte(`{}`), false},
		{"unknown path", http.MethodGet, base + "/nope", "", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, tc.url, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.body == nil {
				req.Body = http.NoBody
				req.ContentLength = 0
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if !tc.noAuth {
				req.Header.Set("Authorization", "Bearer "+testToken)
			}
			cs.mu.Lock()
			before := len(cs.failures)
			cs.mu.Unlock()
			resp, err := cs.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			cs.mu.Lock()
			after := len(cs.failures)
			cs.mu.Unlock()
			if resp.StatusCode != http.StatusBadRequest || after != before+1 {
				t.Errorf("validator accepted it: HTTP %d", resp.StatusCode)
			}
		})
	}
}
