package emulator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPutVariants(t *testing.T) {
	h := newHarness(t, Options{})
	now := h.clock.Now().Unix()
	curlValue, curlCT := curlForm(t, "value", "Some Value")
	curlMeta, curlMetaCT := curlForm(t, "value", "Some Value", "metadata", `{"a":1}`)
	unordered, unorderedCT := curlForm(t, "metadata", `{ "b" : [1, 2] }`, "other", "ignored", "value", "v2")
	cases := []struct {
		name     string
		query    string
		body     []byte
		headers  []string
		wantVal  string
		wantMeta string // "" = none
		wantExp  int64
	}{
		{"raw octet-stream", "", []byte("raw\x00bytes"), []string{"Content-Type", "application/octet-stream"}, "raw\x00bytes", "", 0},
		{"raw without content type", "", []byte("plain"), nil, "plain", "", 0},
		{"empty raw value", "", []byte{}, []string{"Content-Type", "application/octet-stream"}, "", "", 0},
		{"curl -F value", "", curlValue, []string{"Content-Type", curlCT}, "Some Value", "", 0},
		{"curl -F value -F metadata", "", curlMeta, []string{"Content-Type", curlCT2(curlMetaCT)}, "Some Value", `{"a":1}`, 0},
		{"curl -F with expiration_ttl=120", "?expiration_ttl=120", curlMeta, []string{"Content-Type", curlMetaCT}, "Some Value", `{"a":1}`, now + 120},
		{"metadata first, extra part, compacted", "", unordered, []string{"Content-Type", unorderedCT}, "v2", `{"b":[1,2]}`, 0},
		{"absolute expiration", "?expiration=" + strconv.FormatInt(now+3600, 10), []byte("x"), nil, "x", "", now + 3600},
		{"ttl wins over (even invalid) expiration", "?expiration=5&expiration_ttl=60", []byte("x"), nil, "x", "", now + 60},
		{"metadata null is none", "", mustForm(t, "value", "n", "metadata", "null"), []string{"Content-Type", formCT}, "n", "", 0},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("put-%d", i)
			r := h.do("PUT", valuesURL(h, key)+tc.query, tc.body, tc.headers...)
			if r.status != 200 || !r.env.Success || string(r.env.Result) != "null" {
				t.Fatalf("PUT: status %d body %s", r.status, r.body)
			}
			g := h.do("GET", valuesURL(h, key), nil)
			if g.status != 200 || string(g.body) != tc.wantVal {
				t.Fatalf("GET: status %d body %q, want %q", g.status, g.body, tc.wantVal)
			}
			if ct := g.header.Get("Content-Type"); ct != "application/octet-stream" {
				t.Errorf("GET Content-Type %q", ct)
			}
			wantExpHdr := ""
			if tc.wantExp != 0 {
				wantExpHdr = strconv.FormatInt(tc.wantExp, 10)
			}
			if got := g.header.Get("expiration"); got != wantExpHdr {
				t.Errorf("expiration header %q, want %q", got, wantExpHdr)
			}
			m := h.do("GET", h.nsURL("/metadata/"+url.PathEscape(key)), nil)
			wantMeta := tc.wantMeta
			if wantMeta == "" {
				wantMeta = "null"
			}
			if m.status != 200 || string(m.env.Result) != wantMeta {
				t.Errorf("metadata: status %d result %s, want %s", m.status, m.env.Result, wantMeta)
			}
			snap := h.e.Snapshot(testAccount, testNS)[key]
			if string(snap.Value) != tc.wantVal || string(snap.Metadata) != tc.wantMeta || snap.Expiration != tc.wantExp {
				t.Errorf("snapshot %+v", snap)
			}
		})
	}
}

// curlCT2 documents that the Content-Type is passed through unchanged.
func curlCT2(ct string) string { return ct }

const formCT = "multipart/form-data; boundary=kvsyncboundary"

// mustForm builds a multipart body with a fixed boundary.
func mustForm(t testing.TB, fields ...string) []byte {
	t.Helper()
	var b strings.Builder
	for i := 0; i+1 < len(fields); i += 2 {
		fmt.Fprintf(&b, "--kvsyncboundary\r\nContent-Disposition: form-data; name=%q\r\n\r\n%s\r\n", fields[i], fields[i+1])
	}
	b.WriteString("--kvsyncboundary--\r\n")
	return []byte(b.String())
}

func TestWriteLimits(t *testing.T) {
	h := newHarness(t, Options{})
	now := h.clock.Now().Unix()
	meta := func(n int) string { // a JSON object of exactly n bytes
		return `{"a":"` + strings.Repeat("x", n-8) + `"}`
	}
	cases := []struct {
		name       string
		key        string
		query      string
		body       []byte
		ct         string
		wantStatus int
		wantCode   int
	}{
		{"key of 512 bytes", strings.Repeat("k", 512), "", []byte("v"), "", 200, 0},
		{"key of 513 bytes", strings.Repeat("k", 513), "", []byte("v"), "", 400, 10030},
		{"key of 256 two-byte runes (512 bytes)", strings.Repeat("é", 256), "", []byte("v"), "", 200, 0},
		{"key of 257 two-byte runes (514 bytes)", strings.Repeat("é", 257), "", []byte("v"), "", 400, 10030},
		{"key .", ".", "", []byte("v"), "", 400, 10042},
		{"key ..", "..", "", []byte("v"), "", 400, 10042},
		{"key not valid UTF-8", "k\xff", "", []byte("v"), "", 400, 10042},
		{"metadata of 1024 bytes", "m1", "", mustForm(t, "value", "v", "metadata", meta(1024)), formCT, 200, 0},
		{"metadata of 1025 bytes", "m2", "", mustForm(t, "value", "v", "metadata", meta(1025)), formCT, 400, 10047},
		{"metadata 1024 bytes once compacted", "m3", "", mustForm(t, "value", "v", "metadata", " "+meta(1024)+"\n"), formCT, 200, 0},
		{"metadata not JSON", "m4", "", mustForm(t, "value", "v", "metadata", "{a:1}"), formCT, 400, 10047},
		{"metadata behind a form feed", "m8", "", mustForm(t, "value", "v", "metadata", "\f{}"), formCT, 400, 10047},
		{"metadata before an NBSP", "m9", "", mustForm(t, "value", "v", "metadata", "{}\u00a0"), formCT, 400, 10047},
		{"multipart without value", "m5", "", mustForm(t, "metadata", `{"a":1}`), formCT, 400, 10012},
		{"multipart truncated", "m6", "", []byte("--kvsyncboundary\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nabc"), formCT, 400, 10029},
		{"multipart without boundary", "m7", "", []byte("x"), "multipart/form-data", 400, 10029},
		{"value of 25 MiB", "big1", "", bytes.Repeat([]byte{'v'}, MaxValueBytes), "application/octet-stream", 200, 0},
		{"value of 25 MiB + 1", "big2", "", bytes.Repeat([]byte{'v'}, MaxValueBytes+1), "application/octet-stream", 413, 10024},
		{"multipart value of 25 MiB + 1", "big3", "", mustForm(t, "value", strings.Repeat("v", MaxValueBytes+1)), formCT, 413, 10024},
		{"ttl 60", "t1", "?expiration_ttl=60", []byte("v"), "", 200, 0},
		{"ttl 59", "t2", "?expiration_ttl=59", []byte("v"), "", 400, 10034},
		{"ttl not numeric", "t3", "?expiration_ttl=soon", []byte("v"), "", 400, 10034},
		{"ttl fractional", "t4", "?expiration_ttl=60.5", []byte("v"), "", 400, 10034},
		{"expiration now+60", "e1", "?expiration=" + strconv.FormatInt(now+60, 10), []byte("v"), "", 200, 0},
		{"expiration now+59", "e2", "?expiration=" + strconv.FormatInt(now+59, 10), []byte("v"), "", 400, 10033},
		{"expiration in the past", "e3", "?expiration=1000", []byte("v"), "", 400, 10033},
		{"expiration not numeric", "e4", "?expiration=tomorrow", []byte("v"), "", 400, 10033},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.ct != "" {
				hdr = []string{"Content-Type", tc.ct}
			}
			r := h.do("PUT", valuesURL(h, tc.key)+tc.query, tc.body, hdr...)
			if r.status != tc.wantStatus || r.code() != tc.wantCode {
				t.Fatalf("status %d code %d (%s), want %d code %d", r.status, r.code(), r.body, tc.wantStatus, tc.wantCode)
			}
			_, stored := h.e.Snapshot(testAccount, testNS)[tc.key]
			if stored != (tc.wantStatus == 200) {
				t.Errorf("stored = %v after status %d", stored, r.status)
			}
			if r.status != 200 && (r.env.Success || string(r.env.Result) != "null" || r.env.Messages == nil) {
				t.Errorf("failure envelope malformed: %s", r.body)
			}
		})
	}
}

func TestKeyNamesInPath(t *testing.T) {
	h := newHarness(t, Options{})
	cases := []struct {
		name    string
		escaped string // as sent on the wire
		stored  string
	}{
		{"reserved characters", "a%3Ab%21c%25", "a:b!c%"},
		{"encoded slash", "dir%2Fsub%2Ffile.txt", "dir/sub/file.txt"},
		{"unescaped slash is part of the key", "raw/slash", "raw/slash"},
		{"space and unicode", "hello%20w%C3%B6rld", "hello wörld"},
		{"percent-encoded percent stays encoded once", "%2541", "%41"},
		{"question mark", "what%3F", "what?"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := h.nsURL("/values/" + tc.escaped)
			if r := h.do("PUT", u, []byte(tc.name)); r.status != 200 {
				t.Fatalf("PUT %s: %d %s", tc.escaped, r.status, r.body)
			}
			if _, ok := h.e.Snapshot(testAccount, testNS)[tc.stored]; !ok {
				t.Fatalf("key %q not stored; have %v", tc.stored, slices.Collect(mapKeys(h.e.Snapshot(testAccount, testNS))))
			}
			if g := h.do("GET", valuesURL(h, tc.stored), nil); g.status != 200 || string(g.body) != tc.name {
				t.Errorf("GET via url.PathEscape(%q): %d %q", tc.stored, g.status, g.body)
			}
			page, _ := h.list("?prefix=" + url.QueryEscape(tc.stored))
			if len(page.Keys) != 1 || page.Keys[0].Name != tc.stored {
				t.Errorf("listed %+v, want %q", page.Keys, tc.stored)
			}
		})
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestGetMissingAndDelete(t *testing.T) {
	h := newHarness(t, Options{})
	for _, path := range []string{"/values/nope", "/metadata/nope"} {
		r := h.do("GET", h.nsURL(path), nil)
		if r.status != 404 || r.code() != 10009 || r.env.Errors[0].Message != "get: 'key not found'" {
			t.Errorf("GET %s: %d %s", path, r.status, r.body)
		}
	}
	h.do("PUT", valuesURL(h, "k"), []byte("v"))
	if r := h.do("DELETE", valuesURL(h, "k"), nil); r.status != 200 || string(r.env.Result) != "null" {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := h.do("GET", valuesURL(h, "k"), nil); r.status != 404 {
		t.Errorf("GET after DELETE: %d", r.status)
	}
	if r := h.do("DELETE", valuesURL(h, "never-existed"), nil); r.status != 200 {
		t.Errorf("DELETE of a missing key: %d %s", r.status, r.body)
	}
}

func TestBulkWrite(t *testing.T) {
	h := newHarness(t, Options{})
	now := h.clock.Now().Unix()
	body := mustJSON(t, []map[string]any{
		{"key": "plain", "value": "text"},
		{"key": "bin", "value": base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255}), "base64": true},
		{"key": "meta", "value": "m", "metadata": map[string]any{"x": "y"}},
		{"key": "ttl", "value": "t", "expiration_ttl": 300, "expiration": 1},
		{"key": "exp", "value": "e", "expiration": now + 600},
		{"key": "dir/a:b", "value": "slash"},
	})
	r := h.do("PUT", h.nsURL("/bulk"), body, "Content-Type", "application/json")
	if r.status != 200 {
		t.Fatalf("bulk: %d %s", r.status, r.body)
	}
	var res struct {
		Count        *int      `json:"successful_key_count"`
		Unsuccessful *[]string `json:"unsuccessful_keys"`
	}
	if err := json.Unmarshal(r.env.Result, &res); err != nil || res.Count == nil || *res.Count != 6 || res.Unsuccessful == nil || len(*res.Unsuccessful) != 0 {
		t.Fatalf("bulk result %s", r.env.Result)
	}
	snap := h.e.Snapshot(testAccount, testNS)
	want := map[string]Entry{
		"plain":   {Value: []byte("text")},
		"bin":     {Value: []byte{0, 1, 2, 255}},
		"meta":    {Value: []byte("m"), Metadata: json.RawMessage(`{"x":"y"}`)},
		"ttl":     {Value: []byte("t"), Expiration: now + 300},
		"exp":     {Value: []byte("e"), Expiration: now + 600},
		"dir/a:b": {Value: []byte("slash")},
	}
	for k, w := range want {
		g := snap[k]
		if !bytes.Equal(g.Value, w.Value) || string(g.Metadata) != string(w.Metadata) || g.Expiration != w.Expiration {
			t.Errorf("%s: got %+v want %+v", k, g, w)
		}
	}
}

func TestBulkWriteRejects(t *testing.T) {
	h := newHarness(t, Options{})
	now := h.clock.Now().Unix()
	many := make([]map[string]any, MaxBulkPairs+1)
	for i := range many {
		many[i] = map[string]any{"key": fmt.Sprint(i), "value": "v"}
	}
	cases := []struct {
		name       string
		body       string
		wantStatus int
		wantCode   int
	}{
		{"not JSON", "nope", 400, 10029},
		{"not an array", `{"key":"a","value":"b"}`, 400, 10029},
		{"pair without key", `[{"value":"v"}]`, 400, 10029},
		{"pair without value", `[{"key":"k"}]`, 400, 10012},
		{"value not a string", `[{"key":"k","value":5}]`, 400, 10029},
		{"bad base64", `[{"key":"k","value":"!!","base64":true}]`, 400, 10012},
		{"key too long", `[{"key":"` + strings.Repeat("k", 513) + `","value":"v"}]`, 400, 10030},
		{"key empty", `[{"key":"","value":"v"}]`, 400, 10042},
		{"ttl 59", `[{"key":"k","value":"v","expiration_ttl":59}]`, 400, 10034},
		{"expiration too soon", fmt.Sprintf(`[{"key":"k","value":"v","expiration":%d}]`, now+59), 400, 10033},
		{"metadata too large", `[{"key":"k","value":"v","metadata":{"a":"` + strings.Repeat("x", 1100) + `"}}]`, 400, 10047},
		{"value over 25 MiB", `[{"key":"k","value":"` + strings.Repeat("v", MaxValueBytes+1) + `"}]`, 413, 10024},
		{"10,001 pairs", string(mustJSON(t, many)), 400, 10029},
		{"truncated array", `[{"key":"k","value":"v"}`, 400, 10029},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("PUT", h.nsURL("/bulk"), []byte(tc.body), "Content-Type", "application/json")
			if r.status != tc.wantStatus || r.code() != tc.wantCode {
				t.Fatalf("status %d code %d (%.200s), want %d %d", r.status, r.code(), r.body, tc.wantStatus, tc.wantCode)
			}
			if n := len(h.e.Snapshot(testAccount, testNS)); n != 0 {
				t.Errorf("a rejected bulk request stored %d keys", n)
			}
		})
	}
	t.Run("exactly 10,000 pairs", func(t *testing.T) {
		r := h.do("PUT", h.nsURL("/bulk"), mustJSON(t, many[:MaxBulkPairs]), "Content-Type", "application/json")
		if r.status != 200 || !strings.Contains(string(r.env.Result), `"successful_key_count":10000`) {
			t.Fatalf("status %d %.200s", r.status, r.body)
		}
	})
}

func TestBulkRequestSizeLimit(t *testing.T) {
	h := newHarness(t, Options{})
	body := mustJSON(t, []map[string]any{{"key": "a", "value": strings.Repeat("v", 100)}})
	h.e.maxBulkBytes = int64(len(body))
	if r := h.do("PUT", h.nsURL("/bulk"), body); r.status != 200 {
		t.Fatalf("body of exactly the limit: %d %s", r.status, r.body)
	}
	h.e.maxBulkBytes = int64(len(body)) - 1
	if r := h.do("PUT", h.nsURL("/bulk"), body); r.status != 413 || r.code() != 10024 {
		t.Fatalf("body one byte over the limit: %d %s", r.status, r.body)
	}
	dbody := mustJSON(t, []string{"a", "b"})
	h.e.maxBulkBytes = int64(len(dbody)) - 1
	if r := h.do("POST", h.nsURL("/bulk/delete"), dbody); r.status != 413 || r.code() != 10024 {
		t.Fatalf("bulk delete one byte over the limit: %d %s", r.status, r.body)
	}
}

func TestBulkDelete(t *testing.T) {
	for _, tc := range []struct{ name, method, path, op string }{
		{"POST bulk/delete", "POST", "/bulk/delete", OpBulkDelete},
		{"deprecated DELETE bulk", "DELETE", "/bulk", OpBulkDeleteDeprecated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			for _, k := range []string{"a", "b", "c"} {
				h.do("PUT", valuesURL(h, k), []byte(k))
			}
			r := h.do(tc.method, h.nsURL(tc.path), []byte(`["a","c","missing"]`), "Content-Type", "application/json")
			if r.status != 200 || string(r.env.Result) != `{"successful_key_count":3,"unsuccessful_keys":[]}` {
				t.Fatalf("%d %s", r.status, r.body)
			}
			snap := h.e.Snapshot(testAccount, testNS)
			if len(snap) != 1 || string(snap["b"].Value) != "b" {
				t.Errorf("left %v", snap)
			}
			if h.e.Count(tc.op, 200) != 1 {
				t.Errorf("count of %s = %d", tc.op, h.e.Count(tc.op, 200))
			}
			for _, bad := range []string{`[1]`, `["."]`, `{"keys":["a"]}`, `[null]`} {
				if r := h.do(tc.method, h.nsURL(tc.path), []byte(bad)); r.status != 400 {
					t.Errorf("body %s: %d %s", bad, r.status, r.body)
				}
			}
		})
	}
}

func TestListPagination(t *testing.T) {
	h := newHarness(t, Options{})
	var pairs []map[string]any
	var want []string
	for i := range 2500 {
		k := fmt.Sprintf("p/%05d", i)
		pairs = append(pairs, map[string]any{"key": k, "value": "v", "metadata": map[string]int{"i": i}})
		want = append(want, k)
	}
	for i := range 300 {
		pairs = append(pairs, map[string]any{"key": fmt.Sprintf("q/%d", i), "value": "v"}, map[string]any{"key": fmt.Sprintf("o/%d", i), "value": "v"})
	}
	if r := h.do("PUT", h.nsURL("/bulk"), mustJSON(t, pairs[:3000])); r.status != 200 {
		t.Fatal(r.status, string(r.body))
	}
	if r := h.do("PUT", h.nsURL("/bulk"), mustJSON(t, pairs[3000:])); r.status != 200 {
		t.Fatal(r.status, string(r.body))
	}
	var got []string
	var sizes []int
	cursor := ""
	for {
		q := "?prefix=p%2F"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		page, r := h.list(q)
		if r.status != 200 {
			t.Fatalf("list: %d %s", r.status, r.body)
		}
		if page.Count != len(page.Keys) {
			t.Errorf("count %d for %d keys", page.Count, len(page.Keys))
		}
		sizes = append(sizes, len(page.Keys))
		for _, k := range page.Keys {
			got = append(got, k.Name)
			if i, _ := strconv.Atoi(k.Name[2:]); string(k.Metadata) != fmt.Sprintf(`{"i":%d}`, i) {
				t.Fatalf("metadata of %s: %s", k.Name, k.Metadata)
			}
		}
		if page.Cursor == "" {
			break
		}
		cursor = page.Cursor
	}
	if !slices.Equal(sizes, []int{1000, 1000, 500}) {
		t.Errorf("page sizes %v", sizes)
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed %d keys, want %d in order", len(got), len(want))
	}

	t.Run("limit 10 and byte order", func(t *testing.T) {
		h2 := newHarness(t, Options{})
		keys := []string{"b", "a", "B", "é", "z", "aa", "a/b", "a-b", "~", "Z", "0", "ab"}
		for _, k := range keys {
			h2.do("PUT", valuesURL(h2, k), []byte("v"))
		}
		p1, _ := h2.list("?limit=10")
		p2, _ := h2.list("?limit=10&cursor=" + url.QueryEscape(p1.Cursor))
		var names []string
		for _, k := range append(p1.Keys, p2.Keys...) {
			names = append(names, k.Name)
		}
		sorted := slices.Clone(keys)
		slices.Sort(sorted)
		if len(p1.Keys) != 10 || p1.Cursor == "" || p2.Cursor != "" || !slices.Equal(names, sorted) {
			t.Errorf("pages %v / cursor %q, want %v", names, p2.Cursor, sorted)
		}
	})
	t.Run("invalid arguments", func(t *testing.T) {
		for _, tc := range []struct {
			q    string
			code int
		}{{"?limit=5", 10028}, {"?limit=9", 10028}, {"?limit=1001", 10028}, {"?limit=ten", 10028}, {"?cursor=%21%21", 10041}} {
			if _, r := h.list(tc.q); r.status != 400 || r.code() != tc.code {
				t.Errorf("%s: %d %s", tc.q, r.status, r.body)
			}
		}
		if p, r := h.list("?limit=1000&prefix=nothing"); r.status != 200 || len(p.Keys) != 0 || p.Cursor != "" || string(r.env.Result) != "[]" {
			t.Errorf("empty listing: %d %s", r.status, r.body)
		}
	})
}

func TestExpiration(t *testing.T) {
	h := newHarness(t, Options{})
	start := h.clock.Now().Unix()
	h.do("PUT", valuesURL(h, "short")+"?expiration_ttl=60", []byte("v"))
	h.do("PUT", h.nsURL("/bulk"), []byte(`[{"key":"bulk","value":"v","expiration_ttl":120,"metadata":{"m":1}}]`))
	h.do("PUT", valuesURL(h, "forever"), []byte("v"))

	page, _ := h.list("")
	exp := map[string]int64{}
	for _, k := range page.Keys {
		exp[k.Name] = k.Expiration
	}
	if exp["short"] != start+60 || exp["bulk"] != start+120 || exp["forever"] != 0 {
		t.Fatalf("listed expirations (absolute) %v", exp)
	}
	if !strings.Contains(string(page.Keys[1].Metadata), `"m":1`) && !strings.Contains(string(page.Keys[0].Metadata), `"m":1`) {
		t.Errorf("listing lost metadata: %+v", page.Keys)
	}

	h.clock.Advance(59 * time.Second)
	if r := h.do("GET", valuesURL(h, "short"), nil); r.status != 200 || r.header.Get("Expiration") != strconv.FormatInt(start+60, 10) {
		t.Fatalf("before expiry: %d %v", r.status, r.header)
	}
	h.clock.Advance(time.Second)
	for _, p := range []string{"/values/short", "/metadata/short"} {
		if r := h.do("GET", h.nsURL(p), nil); r.status != 404 || r.code() != 10009 {
			t.Errorf("GET %s after expiry: %d %s", p, r.status, r.body)
		}
	}
	if page, _ := h.list(""); len(page.Keys) != 2 {
		t.Errorf("after first expiry listed %+v", page.Keys)
	}
	h.clock.Advance(time.Minute)
	snap := h.e.Snapshot(testAccount, testNS)
	if len(snap) != 1 || snap["forever"].Value == nil {
		t.Errorf("snapshot after expiries: %v", snap)
	}
	// A rewrite revives the key.
	h.do("PUT", valuesURL(h, "short"), []byte("again"))
	if r := h.do("GET", valuesURL(h, "short"), nil); string(r.body) != "again" || r.header.Get("Expiration") != "" {
		t.Errorf("rewritten key: %d %q %v", r.status, r.body, r.header)
	}
}

func TestNamespaces(t *testing.T) {
	h := newHarness(t, Options{})
	base := h.srv.URL + PathPrefix + "/accounts/" + testAccount + "/storage/kv/namespaces"
	create := func(title string) response {
		return h.do("POST", base, mustJSON(t, map[string]string{"title": title}), "Content-Type", "application/json")
	}
	r := create("first")
	var ns struct {
		ID    string `json:"id"`
		Title string `json:"title"`
		URLEn bool   `json:"supports_url_encoding"`
	}
	if r.status != 200 || json.Unmarshal(r.env.Result, &ns) != nil || len(ns.ID) != 32 || ns.Title != "first" || !ns.URLEn {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if r := create("first"); r.status != 400 || r.code() != 10014 {
		t.Errorf("duplicate title: %d %s", r.status, r.body)
	}
	if r := h.do("POST", base, []byte(`{}`)); r.status != 400 || r.code() != 10019 {
		t.Errorf("missing title: %d %s", r.status, r.body)
	}
	for i := range 6 {
		create(fmt.Sprintf("t%d", i))
	}
	// A namespace also springs into existence on its first write.
	h.do("PUT", valuesURL(h, "k"), []byte("v"))

	r = h.do("GET", base+"?per_page=5&page=2&order=title&direction=asc", nil)
	var titles []struct{ Title string }
	json.Unmarshal(r.env.Result, &titles)
	if r.status != 200 || len(titles) != 3 || titles[0].Title != "t3" || !strings.Contains(string(r.env.ResultInfo), `"total_count":8`) {
		t.Errorf("list page 2: %d %s", r.status, r.body)
	}
	for _, q := range []string{"?per_page=4", "?page=0", "?order=size", "?direction=up"} {
		if r := h.do("GET", base+q, nil); r.status != 400 {
			t.Errorf("list %s: %d", q, r.status)
		}
	}

	nsURL := base + "/" + ns.ID
	if r := h.do("GET", nsURL, nil); r.status != 200 || !strings.Contains(string(r.env.Result), `"title":"first"`) {
		t.Errorf("get: %d %s", r.status, r.body)
	}
	if r := h.do("PUT", nsURL, []byte(`{"title":"t0"}`)); r.status != 400 || r.code() != 10014 {
		t.Errorf("rename onto a taken title: %d %s", r.status, r.body)
	}
	if r := h.do("PUT", nsURL, []byte(`{"title":"renamed"}`)); r.status != 200 {
		t.Errorf("rename: %d %s", r.status, r.body)
	}
	if r := h.do("GET", nsURL, nil); !strings.Contains(string(r.env.Result), `"title":"renamed"`) {
		t.Errorf("after rename: %s", r.body)
	}
	h.do("PUT", nsURL+"/values/x", []byte("v"))
	if r := h.do("DELETE", nsURL, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", ""}, {"PUT", ""}, {"DELETE", ""}, {"GET", "/values/x"}, {"PUT", "/values/x"}, {"GET", "/keys"}, {"PUT", "/bulk"},
	} {
		body := []byte(nil)
		if c.method == "PUT" {
			body = []byte(`{"title":"again"}`)
			if c.path == "/bulk" {
				body = []byte(`[{"key":"a","value":"b"}]`)
			}
		}
		if r := h.do(c.method, nsURL+c.path, body); r.status != 404 || r.code() != 10013 {
			t.Errorf("%s %s on a deleted namespace: %d %s", c.method, c.path, r.status, r.body)
		}
	}
	if r := h.do("GET", base+"/0123456789abcdef0123456789abcdef", nil); r.status != 404 || r.code() != 10013 {
		t.Errorf("get of a never-seen namespace: %d %s", r.status, r.body)
	}
}

func TestIdentifiersAndRoutes(t *testing.T) {
	h := newHarness(t, Options{})
	long := strings.Repeat("a", 33)
	ok32 := strings.Repeat("b", 32)
	cases := []struct {
		name, method, path string
		wantStatus, code   int
	}{
		{"32-char ids", "PUT", "/accounts/" + ok32 + "/storage/kv/namespaces/" + ok32 + "/values/k", 200, 0},
		{"33-char account id", "PUT", "/accounts/" + long + "/storage/kv/namespaces/ns/values/k", 400, 7003},
		{"33-char namespace id", "PUT", "/accounts/acc/storage/kv/namespaces/" + long + "/values/k", 400, 10011},
		{"33-char namespace id on list", "GET", "/accounts/acc/storage/kv/namespaces/" + long + "/keys", 400, 10011},
		{"unknown path", "GET", "/zones", 404, 7000},
		{"unknown subresource", "GET", "/accounts/acc/storage/kv/namespaces/ns/things", 404, 7000},
		{"wrong method", "POST", "/accounts/acc/storage/kv/namespaces/ns/values/k", 405, 7001},
		{"empty key", "PUT", "/accounts/acc/storage/kv/namespaces/ns/values/", 400, 10042},
		{"token verify", "GET", "/user/tokens/verify", 200, 0},
		{"account token verify", "GET", "/accounts/acc/tokens/verify", 200, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(tc.method, h.srv.URL+PathPrefix+tc.path, []byte("v"))
			if r.status != tc.wantStatus || r.code() != tc.code {
				t.Errorf("%d %s", r.status, r.body)
			}
		})
	}
	if r := h.do("GET", h.srv.URL+"/accounts/acc/storage/kv/namespaces", nil); r.status != 404 {
		t.Errorf("path without %s served: %d", PathPrefix, r.status)
	}
}

func TestAuthentication(t *testing.T) {
	cases := []struct {
		name       string
		token      string
		headers    []string
		wantStatus int
		wantCode   int
	}{
		{"any bearer", "", []string{"Authorization", "Bearer whatever"}, 200, 0},
		{"any email and key", "", []string{"X-Auth-Email", "a@b.c", "X-Auth-Key", "k"}, 200, 0},
		{"missing credentials", "", []string{"NoAuth", ""}, 400, 9106},
		{"email without key", "", []string{"X-Auth-Email", "a@b.c"}, 400, 6003},
		{"key without email", "", []string{"X-Auth-Key", "k"}, 400, 6003},
		{"basic scheme", "", []string{"Authorization", "Basic dXNlcjpwYXNz"}, 400, 6003},
		{"bearer without token", "", []string{"Authorization", "Bearer "}, 400, 6003},
		{"right token", "s3cret", []string{"Authorization", "Bearer s3cret"}, 200, 0},
		{"wrong token", "s3cret", []string{"Authorization", "Bearer nope"}, 403, 10000},
		{"key equal to token", "s3cret", []string{"X-Auth-Email", "a@b.c", "X-Auth-Key", "s3cret"}, 200, 0},
		{"wrong key", "s3cret", []string{"X-Auth-Email", "a@b.c", "X-Auth-Key", "nope"}, 403, 10000},
		{"missing with token set", "s3cret", []string{"NoAuth", ""}, 400, 9106},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{Token: tc.token})
			r := h.do("PUT", valuesURL(h, "k"), []byte("v"), tc.headers...)
			if r.status != tc.wantStatus || r.code() != tc.wantCode {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if _, stored := h.e.Snapshot(testAccount, testNS)["k"]; stored != (tc.wantStatus == 200) {
				t.Errorf("stored=%v", stored)
			}
			if h.e.Count(OpPut, tc.wantStatus) != 1 {
				t.Errorf("counts %v", h.e.Counts())
			}
		})
	}
}

func TestCountsAndSeed(t *testing.T) {
	h := newHarness(t, Options{})
	if err := h.e.Seed(testAccount, testNS, "seeded", Entry{Value: []byte("s"), Metadata: json.RawMessage(`{ "a" : 1 }`)}); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Seed(testAccount, testNS, "..", Entry{}); err == nil {
		t.Error("Seed accepted an illegal key")
	}
	if err := h.e.Seed(testAccount, testNS, "k", Entry{Metadata: json.RawMessage(`{`)}); err == nil {
		t.Error("Seed accepted invalid metadata")
	}
	if r := h.do("GET", h.nsURL("/metadata/seeded"), nil); string(r.env.Result) != `{"a":1}` {
		t.Errorf("seeded metadata %s", r.env.Result)
	}
	h.do("GET", valuesURL(h, "seeded"), nil)
	h.do("GET", valuesURL(h, "missing"), nil)
	h.do("PUT", valuesURL(h, "k"), []byte("v"))
	h.do("GET", h.nsURL("/keys"), nil)
	want := map[CountKey]int{{OpGetMetadata, 200}: 1, {OpGet, 200}: 1, {OpGet, 404}: 1, {OpPut, 200}: 1, {OpList, 200}: 1}
	if got := h.e.Counts(); !mapsEqual(got, want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	if h.e.Count(OpGet, 0) != 2 {
		t.Errorf("Count(get, 0) = %d", h.e.Count(OpGet, 0))
	}
	h.e.ResetCounts()
	if len(h.e.Counts()) != 0 {
		t.Errorf("after reset: %v", h.e.Counts())
	}
}

func mapsEqual(a, b map[CountKey]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
