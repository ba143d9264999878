package emulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/kvsync/kvsync/api/openapi"
)

// loadSpec is the vendored schema and a router over its operations.
func loadSpec(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	doc, err := openapi.Load()
	if err != nil {
		t.Fatal(err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("router: %v", err)
	}
	return doc, router
}

// specAuth checks that the credentials a security scheme names are present.
func specAuth(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header
	switch in.SecuritySchemeName {
	case "api_token":
		if tok, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer "); ok && tok != "" {
			return nil
		}
	case "api_email":
		if h.Get("X-Auth-Email") != "" {
			return nil
		}
	case "api_key":
		if h.Get("X-Auth-Key") != "" {
			return nil
		}
	}
	return errors.New("credentials for " + in.SecuritySchemeName + " missing")
}

type specCall struct {
	method, path string // path below PathPrefix, escaped as on the wire
	body         []byte
	contentType  string
	headers      []string // replaces the default Bearer token when set
}

func (c specCall) request(t *testing.T, base string) *http.Request {
	t.Helper()
	var body io.Reader = http.NoBody
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, base+PathPrefix+c.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	if c.headers == nil {
		req.Header.Set("Authorization", "Bearer test-token")
	}
	for i := 0; i+1 < len(c.headers); i += 2 {
		req.Header.Set(c.headers[i], c.headers[i+1])
	}
	return req
}

// validateRequest is the schema's verdict on a call.
func validateRequest(t *testing.T, router routers.Router, c specCall) (*openapi3filter.RequestValidationInput, error) {
	t.Helper()
	req := c.request(t, "https://api.cloudflare.com")
	route, params, err := router.FindRoute(req)
	if err != nil {
		return nil, fmt.Errorf("no route: %w", err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: specAuth}}
	return in, openapi3filter.ValidateRequest(context.Background(), in)
}

// send performs the call against the emulator.
func send(t *testing.T, h *harness, c specCall) (int, http.Header, []byte) {
	t.Helper()
	resp, err := h.srv.Client().Do(c.request(t, h.srv.URL))
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func validateResponse(in *openapi3filter.RequestValidationInput, status int, header http.Header, body []byte) error {
	return openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: status, Header: header, Body: io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	})
}

func TestOpenAPIConformance(t *testing.T) {
	_, router := loadSpec(t)
	h := newHarness(t, Options{})
	now := h.clock.Now().Unix()
	const P = "/accounts/acc/storage/kv/namespaces/" + testNS
	const NSS = "/accounts/acc/storage/kv/namespaces"
	seed := func(ns, key string, meta string) {
		ent := Entry{Value: []byte("seeded")}
		if meta != "" {
			ent.Metadata = []byte(meta)
		}
		if err := h.e.Seed("acc", ns, key, ent); err != nil {
			t.Fatal(err)
		}
	}
	seed(testNS, "existing", `{"a":1}`)
	seed(testNS, "withmeta", `{"b":2}`)
	seed("todelete", "x", "")
	seed("todelete2", "x", "")

	curl, curlCT := curlForm(t, "value", "Some Value")
	curlMeta, curlMetaCT := curlForm(t, "value", "Some Value", "metadata", `{"a":1}`)
	jsonMeta := func(meta string) []byte { // what wrangler's FormData and cloudflare-go send
		return []byte("--kvsyncboundary\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nv\r\n" +
			"--kvsyncboundary\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n" +
			meta + "\r\n--kvsyncboundary--\r\n")
	}
	metaTooBig := jsonMeta(`{"a":"` + strings.Repeat("x", 1018) + `"}`)
	noValue := mustForm(t, "metadata", `{"a":1}`)
	longASCII := strings.Repeat("k", 513)
	longBytes := strings.Repeat("é", 300)     // 300 characters, 600 bytes
	escapedLong := strings.Repeat("%25", 200) // 200 bytes once decoded, 600 characters escaped
	id33 := strings.Repeat("a", 33)

	cases := []struct {
		name           string
		call           specCall
		schemaAccepts  bool
		emulatorAccept bool
		note           string // required where the two verdicts differ
	}{
		{"raw octet-stream PUT", specCall{method: "PUT", path: P + "/values/raw", body: []byte("bytes"), contentType: "application/octet-stream"}, true, true, ""},
		{"curl -F value", specCall{method: "PUT", path: P + "/values/curl", body: curl, contentType: curlCT}, true, true, ""},
		{"curl -F value -F metadata ?expiration_ttl=120", specCall{method: "PUT", path: P + "/values/curl2?expiration_ttl=120", body: curlMeta, contentType: curlMetaCT}, false, true,
			"curl -F sends the metadata part without a Content-Type, which kin-openapi reads as text/plain against the schema's encoding application/json; Cloudflare's own curl examples send exactly this"},
		{"metadata part labelled application/json", specCall{method: "PUT", path: P + "/values/jsonmeta?expiration_ttl=120", body: jsonMeta(`{"a":1}`), contentType: formCT}, true, true, ""},
		{"absolute expiration", specCall{method: "PUT", path: P + fmt.Sprintf("/values/exp?expiration=%d", now+3600), body: []byte("v"), contentType: "application/octet-stream"}, true, true, ""},
		{"reserved characters in key", specCall{method: "PUT", path: P + "/values/a%3Ab%21c%25", body: []byte("v"), contentType: "application/octet-stream"}, true, true, ""},
		{"encoded slash in key", specCall{method: "PUT", path: P + "/values/dir%2Ffile", body: []byte("v"), contentType: "application/octet-stream"}, true, true, ""},
		{"email and key auth", specCall{method: "PUT", path: P + "/values/emailkey", body: []byte("v"), contentType: "application/octet-stream", headers: []string{"X-Auth-Email", "a@b.c", "X-Auth-Key", "k"}}, true, true, ""},
		{"expiration_ttl=30", specCall{method: "PUT", path: P + "/values/ttl?expiration_ttl=30", body: []byte("v"), contentType: "application/octet-stream"}, false, false, ""},
		{"expiration_ttl not a number", specCall{method: "PUT", path: P + "/values/ttl?expiration_ttl=soon", body: []byte("v"), contentType: "application/octet-stream"}, false, false, ""},
		{"multipart without value", specCall{method: "PUT", path: P + "/values/nv", body: noValue, contentType: formCT}, false, false, ""},
		{"key of 513 ASCII characters", specCall{method: "PUT", path: P + "/values/" + longASCII, body: []byte("v"), contentType: "application/octet-stream"}, false, false, ""},
		{"missing credentials", specCall{method: "GET", path: P + "/keys", headers: []string{"X-Other", "1"}}, false, false, ""},
		{"key of 200 percent signs, 600 characters escaped", specCall{method: "PUT", path: P + "/values/" + escapedLong, body: []byte("v"), contentType: "application/octet-stream"}, false, true,
			"kin-openapi applies maxLength to the still-escaped path segment; the key itself is 200 bytes"},
		{"key '.'", specCall{method: "PUT", path: P + "/values/.", body: []byte("v"), contentType: "application/octet-stream"}, true, false,
			"the docs forbid the key names '.' and '..'; the schema is silent"},
		{"metadata of 1025 bytes", specCall{method: "PUT", path: P + "/values/bigmeta", body: metaTooBig, contentType: formCT}, true, false,
			"the 1024-byte metadata limit is only in the docs"},
		{"absolute expiration 30 s ahead", specCall{method: "PUT", path: P + fmt.Sprintf("/values/soon?expiration=%d", now+30), body: []byte("v"), contentType: "application/octet-stream"}, true, false,
			"the docs require expirations at least 60 s ahead; the schema is silent"},

		{"bulk write", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"key":"b1","value":"v","metadata":{"m":1},"expiration_ttl":120},{"key":"b2","value":"dg==","base64":true}]`), contentType: "application/json"}, true, true, ""},
		{"bulk pair without key", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"value":"v"}]`), contentType: "application/json"}, false, false, ""},
		{"bulk pair without value", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"key":"k"}]`), contentType: "application/json"}, false, false, ""},
		{"bulk value not a string", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"key":"k","value":1}]`), contentType: "application/json"}, false, false, ""},
		{"bulk body not an array", specCall{method: "PUT", path: P + "/bulk", body: []byte(`{"key":"k","value":"v"}`), contentType: "application/json"}, false, false, ""},
		{"bulk expiration_ttl 30", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"key":"k","value":"v","expiration_ttl":30}]`), contentType: "application/json"}, false, false, ""},
		{"bulk key of 513 characters", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"key":"` + longASCII + `","value":"v"}]`), contentType: "application/json"}, false, false, ""},
		{"bulk key of 300 two-byte characters", specCall{method: "PUT", path: P + "/bulk", body: []byte(`[{"key":"` + longBytes + `","value":"v"}]`), contentType: "application/json"}, true, false,
			"schema maxLength counts characters; the docs limit keys to 512 bytes"},
		{"bulk expiration 30 s ahead", specCall{method: "PUT", path: P + "/bulk", body: []byte(fmt.Sprintf(`[{"key":"k","value":"v","expiration":%d}]`, now+30)), contentType: "application/json"}, true, false,
			"the docs require expirations at least 60 s ahead; the schema is silent"},
		{"bulk delete", specCall{method: "POST", path: P + "/bulk/delete", body: []byte(`["b1","never"]`), contentType: "application/json"}, true, true, ""},
		{"bulk delete of a number", specCall{method: "POST", path: P + "/bulk/delete", body: []byte(`[1]`), contentType: "application/json"}, false, false, ""},
		{"deprecated bulk delete", specCall{method: "DELETE", path: P + "/bulk", body: []byte(`["b2"]`), contentType: "application/json"}, true, true, ""},
		{"delete value", specCall{method: "DELETE", path: P + "/values/raw"}, true, true, ""},

		{"list keys", specCall{method: "GET", path: P + "/keys"}, true, true, ""},
		{"list keys limit 10 with prefix", specCall{method: "GET", path: P + "/keys?limit=10&prefix=e"}, true, true, ""},
		{"list keys limit 5", specCall{method: "GET", path: P + "/keys?limit=5"}, false, false, ""},
		{"list keys limit 1001", specCall{method: "GET", path: P + "/keys?limit=1001"}, false, false, ""},
		{"namespace id of 33 characters", specCall{method: "GET", path: NSS + "/" + id33 + "/keys"}, false, false, ""},
		{"account id of 33 characters", specCall{method: "GET", path: "/accounts/" + id33 + "/storage/kv/namespaces"}, false, false, ""},
		{"read value", specCall{method: "GET", path: P + "/values/existing"}, true, true, ""},
		{"read metadata", specCall{method: "GET", path: P + "/metadata/withmeta"}, true, true, ""},

		{"list namespaces", specCall{method: "GET", path: NSS + "?page=1&per_page=5&order=title&direction=desc"}, true, true, ""},
		{"list namespaces per_page 4", specCall{method: "GET", path: NSS + "?per_page=4"}, false, false, ""},
		{"list namespaces order size", specCall{method: "GET", path: NSS + "?order=size"}, false, false, ""},
		{"create namespace", specCall{method: "POST", path: NSS, body: []byte(`{"title":"conformance"}`), contentType: "application/json"}, true, true, ""},
		{"create namespace without title", specCall{method: "POST", path: NSS, body: []byte(`{}`), contentType: "application/json"}, false, false, ""},
		{"get namespace", specCall{method: "GET", path: P}, true, true, ""},
		{"rename namespace", specCall{method: "PUT", path: P, body: []byte(`{"title":"renamed"}`), contentType: "application/json"}, true, true, ""},
		{"rename without title", specCall{method: "PUT", path: P, body: []byte(`{"name":"x"}`), contentType: "application/json"}, false, false, ""},
		{"delete namespace with the declared empty JSON body", specCall{method: "DELETE", path: NSS + "/todelete", body: []byte(`{}`), contentType: "application/json"}, true, true, ""},
		{"delete namespace without a body", specCall{method: "DELETE", path: NSS + "/todelete2"}, false, true,
			"the 2024 schema declares a required (empty) JSON body on DELETE namespace; clients send none, kv-api.md §7.11"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.schemaAccepts != tc.emulatorAccept) != (tc.note != "") {
				t.Fatal("a case where the verdicts differ needs a note, and only such a case")
			}
			in, verr := validateRequest(t, router, tc.call)
			if (verr == nil) != tc.schemaAccepts {
				t.Errorf("schema verdict: accepted=%v (%v), want %v", verr == nil, verr, tc.schemaAccepts)
			}
			status, header, body := send(t, h, tc.call)
			if accepted := status >= 200 && status < 300; accepted != tc.emulatorAccept {
				t.Errorf("emulator verdict: status %d (%.300s), want accepted=%v", status, body, tc.emulatorAccept)
			}
			if in == nil {
				return // the schema has no route: nothing to validate the answer against
			}
			if err := validateResponse(in, status, header, body); err != nil {
				t.Errorf("response %d %.300s does not validate: %v", status, body, err)
			}
		})
	}
}

// TestOpenAPIResponses validates answers that depend on state or faults.
func TestOpenAPIResponses(t *testing.T) {
	_, router := loadSpec(t)
	h := newHarness(t, Options{})
	const P = "/accounts/acc/storage/kv/namespaces/" + testNS
	if err := h.e.Seed("acc", testNS, "plain", Entry{Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	check := func(name string, c specCall, wantStatus int, wantValid bool, why string) {
		t.Run(name, func(t *testing.T) {
			in, err := validateRequest(t, router, c)
			if err != nil {
				t.Fatalf("request invalid: %v", err)
			}
			status, header, body := send(t, h, c)
			if status != wantStatus {
				t.Fatalf("status %d %s, want %d", status, body, wantStatus)
			}
			err = validateResponse(in, status, header, body)
			if (err == nil) != wantValid {
				t.Errorf("response %s: valid=%v (%v), want %v: %s", body, err == nil, err, wantValid, why)
			}
		})
	}
	check("404 key not found", specCall{method: "GET", path: P + "/values/missing"}, 404, true, "")
	check("404 metadata of a missing key", specCall{method: "GET", path: P + "/metadata/missing"}, 404, true, "")
	t.Run("negative control: a malformed envelope fails validation", func(t *testing.T) {
		in, err := validateRequest(t, router, specCall{method: "GET", path: P + "/metadata/missing"})
		if err != nil {
			t.Fatal(err)
		}
		for _, body := range []string{`{"success":true}`, `{"success":false,"errors":[{"code":10009}],"messages":[],"result":null}`} {
			if validateResponse(in, 404, http.Header{"Content-Type": {"application/json"}}, []byte(body)) == nil {
				t.Errorf("%s validated", body)
			}
		}
	})
	check("list with a value without metadata", specCall{method: "GET", path: P + "/keys"}, 200, true, "")
	// Documented deviation: the schema types this result as a non-nullable
	// object, but a key without metadata has none; we answer null, which is
	// what kvapi.KV.GetMetadata expects.
	check("metadata of a key without metadata", specCall{method: "GET", path: P + "/metadata/plain"}, 200, false,
		"result null is outside the schema's object type")

	h.e.SetFaults(Faults{PerKeyWriteLimit: true})
	put := specCall{method: "PUT", path: P + "/values/hot", body: []byte("v"), contentType: "application/octet-stream"}
	check("first write", put, 200, true, "")
	check("429 per-key limit, code 10022", put, 429, true, "")

	h.e.SetFaults(Faults{Budget: 1})
	check("within budget", specCall{method: "GET", path: P + "/values/plain"}, 200, true, "")
	// Documented deviation: Cloudflare answers the global limit with code
	// 971, below the schema's minimum of 1000 for error codes.
	check("429 over budget, code 971", specCall{method: "GET", path: P + "/values/plain"}, 429, false,
		"code 971 is below the schema's minimum error code 1000")
}
