package emulator

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/routers"
)

// These tests pin what kvsync will trust once the namespace listing is its
// source of truth (issue 13): every key's metadata and expiration as
// written, paging by cursor, and stale listings on demand.

// listedRaw is one listed key with its fields kept raw, so that a test can
// tell an omitted field from an empty one and compare metadata bytes.
type listedRaw map[string]json.RawMessage

func (k listedRaw) name() string {
	var s string
	json.Unmarshal(k["name"], &s)
	return s
}

// specPage is a list reply read by the test, with the schema's verdict.
type specPage struct {
	keys   []listedRaw
	count  int
	cursor string
	body   []byte
	// invalid is the schema's objection to the reply, nil if it validates.
	invalid error
}

// specList lists ns through the vendored schema: the request must validate
// (so a test cannot page with a query Cloudflare would refuse), the reply
// must be a 200 with result_info.cursor present as a string, and the
// reply's validation is returned for the caller to judge.
func specList(t *testing.T, h *harness, router routers.Router, ns, query string) specPage {
	t.Helper()
	c := specCall{method: "GET", path: "/accounts/" + testAccount + "/storage/kv/namespaces/" + ns + "/keys" + query}
	in, err := validateRequest(t, router, c)
	if err != nil {
		t.Fatalf("list request %s is outside the schema: %v", query, err)
	}
	status, header, body := send(t, h, c)
	if status != http.StatusOK {
		t.Fatalf("list %s: %d %s", query, status, body)
	}
	p := specPage{body: body, invalid: validateResponse(in, status, header, body)}
	var env struct {
		Result     []listedRaw `json:"result"`
		ResultInfo struct {
			Count  *int    `json:"count"`
			Cursor *string `json:"cursor"`
		} `json:"result_info"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Result == nil {
		t.Fatalf("list %s: undecodable reply or no result array: %s (%v)", query, body, err)
	}
	if env.ResultInfo.Count == nil || env.ResultInfo.Cursor == nil {
		t.Fatalf("list %s: result_info needs count and cursor: %s", query, body)
	}
	p.keys, p.count, p.cursor = env.Result, *env.ResultInfo.Count, *env.ResultInfo.Cursor
	return p
}

// listAll pages through a listing to the empty cursor, requiring every
// reply to validate, and returns the pages.
func listAll(t *testing.T, h *harness, router routers.Router, ns, query string) []specPage {
	t.Helper()
	return listFrom(t, h, router, ns, query, "")
}

// listFrom is listAll starting at cursor.
func listFrom(t *testing.T, h *harness, router routers.Router, ns, query, cursor string) []specPage {
	t.Helper()
	var pages []specPage
	for {
		q := query
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		p := specList(t, h, router, ns, "?"+strings.TrimPrefix(q, "&"))
		if p.invalid != nil {
			t.Fatalf("list %s: reply does not validate: %v\n%.500s", q, p.invalid, p.body)
		}
		pages = append(pages, p)
		if p.cursor == "" {
			return pages
		}
		if len(pages) > 1000 {
			t.Fatal("the cursor never ends")
		}
		cursor = p.cursor
	}
}

func names(pages ...specPage) []string {
	var out []string
	for _, p := range pages {
		for _, k := range p.keys {
			out = append(out, k.name())
		}
	}
	return out
}

// jsonForm is a multipart body whose metadata part is labelled
// application/json, as wrangler's FormData and cloudflare-go send it.
func jsonForm(value, meta string) []byte {
	return []byte("--kvsyncboundary\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\n" + value + "\r\n" +
		"--kvsyncboundary\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n" +
		meta + "\r\n--kvsyncboundary--\r\n")
}

func TestListMetadataAsWritten(t *testing.T) {
	_, router := loadSpec(t)
	maxMeta := `{"m":"` + strings.Repeat("x", MaxMetadataBytes-8) + `"}`
	cases := []struct {
		name    string
		written string // the metadata JSON as the writer sends it
		listed  string // the bytes the listing must carry; "" = no metadata field
		// schemaObjects is why a reply carrying this metadata fails the
		// schema, which types listed metadata as an object; "" = it passes.
		schemaObjects string
	}{
		{"flat object", `{"a":1}`, `{"a":1}`, ""},
		{"key order kept, integer-like names too", `{"z":1,"a":2,"10":3,"2":4}`, `{"z":1,"a":2,"10":3,"2":4}`, ""},
		{"HTML characters not escaped", `{"h":"<a href=\"x\">&amp;</a>"}`, `{"h":"<a href=\"x\">&amp;</a>"}`, ""},
		{"U+2028 and U+2029 not escaped", "{\"s\":\"a\u2028b\u2029c\"}", "{\"s\":\"a\u2028b\u2029c\"}", ""},
		{"escapes kept as written", `{"e":"\u00e9\/\"\\\t"}`, `{"e":"\u00e9\/\"\\\t"}`, ""},
		{"numbers as written", `{"n":[1.0,1e3,-0,12345678901234567890,0.1,1E-7]}`, `{"n":[1.0,1e3,-0,12345678901234567890,0.1,1E-7]}`, ""},
		{"non-ASCII names and values", `{"é":"日本 😀"}`, `{"é":"日本 😀"}`, ""},
		{"nesting, null and booleans", `{"a":{"b":[null,true,false,{},[]]}}`, `{"a":{"b":[null,true,false,{},[]]}}`, ""},
		{"empty object", `{}`, `{}`, ""},
		{"1024 bytes, the limit", maxMeta, maxMeta, ""},
		// Whitespace between tokens is the one thing not kept (see the
		// package doc): it carries nothing a JSON reader can see.
		{"whitespace between tokens dropped", " {\n\t\"a\" : [1, 2],\r\n \"b\" : \" x \" }\n", `{"a":[1,2],"b":" x "}`, ""},
		{"JSON null is no metadata", `null`, ``, ""},
		{"a string", `"text"`, `"text"`, "a string is not an object"},
		{"an array", `[1,"a"]`, `[1,"a"]`, "an array is not an object"},
		{"a number", `42`, `42`, "a number is not an object"},
	}
	writers := []struct {
		name  string
		write func(h *harness, key, meta string) response
	}{
		{"PUT multipart, metadata part as curl -F sends it", func(h *harness, key, meta string) response {
			body, ct := curlForm(h.t, "value", "v", "metadata", meta)
			return h.do("PUT", valuesURL(h, key), body, "Content-Type", ct)
		}},
		{"PUT multipart, metadata part labelled application/json", func(h *harness, key, meta string) response {
			return h.do("PUT", valuesURL(h, key), jsonForm("v", meta), "Content-Type", formCT)
		}},
		{"bulk write", func(h *harness, key, meta string) response {
			body := `[{"key":` + string(mustJSON(h.t, key)) + `,"value":"v","metadata":` + meta + `}]`
			return h.do("PUT", h.nsURL("/bulk"), []byte(body), "Content-Type", "application/json")
		}},
	}
	for _, w := range writers {
		t.Run(w.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			// A neighbour without metadata, listed on the same page, must
			// stay without the field.
			if r := h.do("PUT", valuesURL(h, "m/~plain"), []byte("v")); r.status != 200 {
				t.Fatalf("plain write: %d %s", r.status, r.body)
			}
			for i, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					key := fmt.Sprintf("m/%02d", i)
					if r := w.write(h, key, tc.written); r.status != 200 {
						t.Fatalf("write: %d %s", r.status, r.body)
					}
					p := specList(t, h, router, testNS, "?prefix="+url.QueryEscape(key))
					if len(p.keys) != 1 || p.keys[0].name() != key || p.count != 1 || p.cursor != "" {
						t.Fatalf("listing of %q: %s", key, p.body)
					}
					got, has := p.keys[0]["metadata"]
					switch {
					case tc.listed == "" && has:
						t.Errorf("metadata %s listed, want the field omitted", got)
					case tc.listed != "" && !bytes.Equal(got, []byte(tc.listed)):
						t.Errorf("listed metadata\n%s\nwant\n%s", got, tc.listed)
					}
					if _, has := p.keys[0]["expiration"]; has {
						t.Errorf("expiration listed for a key written without one: %s", p.body)
					}
					if (p.invalid != nil) != (tc.schemaObjects != "") {
						t.Errorf("schema verdict on the reply: %v, want invalid=%v (%s)", p.invalid, tc.schemaObjects != "", tc.schemaObjects)
					}
					// GET .../metadata and Snapshot serve the same bytes.
					r := h.do("GET", h.nsURL("/metadata/"+url.PathEscape(key)), nil)
					want := tc.listed
					if want == "" {
						want = "null"
					}
					if r.status != 200 || string(r.env.Result) != want {
						t.Errorf("GET metadata: %d %s, want result %s", r.status, r.env.Result, want)
					}
					if snap := h.e.Snapshot(testAccount, testNS)[key]; string(snap.Metadata) != tc.listed {
						t.Errorf("Snapshot metadata %s, want %s", snap.Metadata, tc.listed)
					}
				})
			}
			// Every key on one page: the metadata of one key never leaks
			// into another's entry.
			// (Not validated: the page holds the non-object metadata.)
			all := specList(t, h, router, testNS, "?prefix=m%2F&limit=1000")
			if len(all.keys) != len(cases)+1 || all.cursor != "" {
				t.Fatalf("one page of %d keys expected: %s", len(cases)+1, all.body)
			}
			for i, tc := range cases {
				if got := all.keys[i]["metadata"]; string(got) != tc.listed {
					t.Errorf("%s: metadata %s on a full page, want %s", tc.name, got, tc.listed)
				}
			}
			last := all.keys[len(cases)]
			if last.name() != "m/~plain" || last["metadata"] != nil {
				t.Errorf("the key without metadata is listed as %v", last)
			}
		})
	}
}

func TestListExpirationAbsolute(t *testing.T) {
	_, router := loadSpec(t)
	h := newHarness(t, Options{})
	now := h.clock.Now().Unix()
	put := func(key, query string) response {
		return h.do("PUT", valuesURL(h, key)+query, []byte("v"))
	}
	bulk := func(key, fields string) response {
		return h.do("PUT", h.nsURL("/bulk"), []byte(`[{"key":"`+key+`","value":"v"`+fields+`}]`), "Content-Type", "application/json")
	}
	cases := []struct {
		name  string
		key   string
		write func() response
		want  int64 // absolute; 0 = never expires, field omitted
	}{
		{"PUT expiration", "e/put-exp", func() response { return put("e/put-exp", fmt.Sprintf("?expiration=%d", now+3600)) }, now + 3600},
		{"PUT expiration_ttl", "e/put-ttl", func() response { return put("e/put-ttl", "?expiration_ttl=300") }, now + 300},
		{"PUT both: the TTL wins", "e/put-both", func() response {
			return put("e/put-both", fmt.Sprintf("?expiration=%d&expiration_ttl=120", now+7200))
		}, now + 120},
		{"PUT multipart with expiration_ttl", "e/put-form", func() response {
			return h.do("PUT", valuesURL(h, "e/put-form")+"?expiration_ttl=600", jsonForm("v", `{"a":1}`), "Content-Type", formCT)
		}, now + 600},
		{"bulk expiration", "e/bulk-exp", func() response { return bulk("e/bulk-exp", fmt.Sprintf(`,"expiration":%d`, now+86400)) }, now + 86400},
		{"bulk expiration_ttl", "e/bulk-ttl", func() response { return bulk("e/bulk-ttl", `,"expiration_ttl":60`) }, now + 60},
		{"bulk both: the TTL wins", "e/bulk-both", func() response {
			return bulk("e/bulk-both", fmt.Sprintf(`,"expiration":%d,"expiration_ttl":900`, now+86400))
		}, now + 900},
		{"no expiration", "e/never", func() response { return put("e/never", "") }, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if r := tc.write(); r.status != 200 {
				t.Fatalf("write: %d %s", r.status, r.body)
			}
			p := specList(t, h, router, testNS, "?prefix="+url.QueryEscape(tc.key))
			if p.invalid != nil {
				t.Fatalf("reply does not validate: %v", p.invalid)
			}
			if len(p.keys) != 1 {
				t.Fatalf("listing: %s", p.body)
			}
			got, has := p.keys[0]["expiration"]
			if tc.want == 0 {
				if has {
					t.Errorf("expiration %s listed for a key that never expires", got)
				}
				return
			}
			// Digits only: a reader decoding into int64 must not meet 1.7e+09.
			if string(got) != fmt.Sprint(tc.want) {
				t.Errorf("listed expiration %s, want %d (absolute epoch seconds)", got, tc.want)
			}
		})
	}
	t.Run("expired keys are not listed", func(t *testing.T) {
		h.clock.Advance(301 * time.Second) // past e/bulk-ttl (60), e/put-both (120) and e/put-ttl (300) only
		p := specList(t, h, router, testNS, "?prefix=e%2F")
		want := []string{"e/bulk-both", "e/bulk-exp", "e/never", "e/put-exp", "e/put-form"}
		if got := names(p); !slices.Equal(got, want) || p.count != len(want) {
			t.Errorf("listed %v (count %d), want %v", got, p.count, want)
		}
	})
}

func TestListPagingWithPrefix(t *testing.T) {
	_, router := loadSpec(t)
	h := newHarness(t, Options{})
	seed := func(key string) {
		if err := h.e.Seed(testAccount, testNS, key, Entry{Value: []byte("v"), Metadata: json.RawMessage(`{"k":` + string(mustJSON(t, key)) + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	// 2,345 keys under "site/", among neighbours that sort just before and
	// just after the prefix, and special characters whose bytes order them.
	var want []string
	for i := range 2330 {
		want = append(want, fmt.Sprintf("site/%05d.html", i))
	}
	want = append(want, "site/", "site/ space", "site/%25", "site/<&>", "site/é", "site/日本",
		"site/😀", "site/\u2028", "site/A", "site/a/b", "site/~", "site/\x7f", "site/z", "site/-", "site/.")
	for _, k := range want {
		seed(k)
	}
	for _, k := range []string{"site", "site.", "site0", "sitf", "sit", "", "a", "zzz", "site-/x"} {
		if k != "" {
			seed(k)
		}
	}
	slices.Sort(want) // byte order
	cases := []struct {
		limit int // 0 = the default
		sizes []int
	}{
		{0, []int{1000, 1000, 345}},
		{1000, []int{1000, 1000, 345}},
		{345, []int{345, 345, 345, 345, 345, 345, 275}},
		{469, []int{469, 469, 469, 469, 469}}, // 2,345 = 5 × 469: no empty page after the last full one
		{10, nil},                             // 235 pages, checked by count
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("limit %d", tc.limit), func(t *testing.T) {
			q := "prefix=site%2F"
			if tc.limit != 0 {
				q += fmt.Sprintf("&limit=%d", tc.limit)
			}
			pages := listAll(t, h, router, testNS, q)
			limit := cmp.Or(tc.limit, MaxListLimit)
			if wantPages := int(math.Ceil(float64(len(want)) / float64(limit))); len(pages) != wantPages {
				t.Errorf("%d pages, want %d", len(pages), wantPages)
			}
			var sizes []int
			for i, p := range pages {
				sizes = append(sizes, len(p.keys))
				if p.count != len(p.keys) {
					t.Errorf("page %d: count %d for %d keys", i, p.count, len(p.keys))
				}
				if i < len(pages)-1 && len(p.keys) != limit {
					t.Errorf("page %d of a listing without expired keys holds %d keys, want %d", i, len(p.keys), limit)
				}
				for _, k := range p.keys {
					if string(k["metadata"]) != `{"k":`+string(mustJSON(t, k.name()))+`}` {
						t.Fatalf("metadata of %q: %s", k.name(), k["metadata"])
					}
				}
			}
			if tc.sizes != nil && !slices.Equal(sizes, tc.sizes) {
				t.Errorf("page sizes %v, want %v", sizes, tc.sizes)
			}
			if got := names(pages...); !slices.Equal(got, want) {
				t.Errorf("listed %d keys, want %d in byte order; first difference at %d", len(got), len(want), firstDiff(got, want))
			}
		})
	}
	t.Run("the cursor is bound to a position, not to a request", func(t *testing.T) {
		// A key written between two pages, after the cursor, is listed; one
		// deleted ahead of the cursor is not.
		p1 := specList(t, h, router, testNS, "?prefix=site%2F&limit=1000")
		seed("site/99999-new")
		if r := h.do("DELETE", valuesURL(h, "site/<&>"), nil); r.status != 200 {
			t.Fatalf("delete: %d", r.status)
		}
		defer seed("site/<&>")
		rest := listFrom(t, h, router, testNS, "prefix=site%2F", p1.cursor)
		got := names(rest...)
		if !slices.Contains(got, "site/99999-new") || slices.Contains(got, "site/<&>") || slices.Contains(got, names(p1)[999]) {
			t.Errorf("pages after the first: %d keys, new key listed %v, deleted key listed %v",
				len(got), slices.Contains(got, "site/99999-new"), slices.Contains(got, "site/<&>"))
		}
		if r := h.do("DELETE", valuesURL(h, "site/99999-new"), nil); r.status != 200 {
			t.Fatalf("delete: %d", r.status)
		}
	})
}

func TestListPagesWithExpiredKeys(t *testing.T) {
	_, router := loadSpec(t)
	// 25 keys k00..k24 read 10 at a time; the expired ones still take their
	// place in a page, as Cloudflare's tombstones do, so pages come short
	// or empty with a cursor, and only the empty cursor ends the listing.
	cases := []struct {
		name    string
		expired [2]int // [from, to) of the keys that expire
		sizes   []int
	}{
		{"expired keys across two pages", [2]int{3, 18}, []int{3, 2, 5}},
		{"a page of expired keys only", [2]int{10, 20}, []int{10, 0, 5}},
		{"the last keys expired", [2]int{20, 25}, []int{10, 10, 0}},
		{"none expired", [2]int{0, 0}, []int{10, 10, 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			now := h.clock.Now().Unix()
			var live []string
			for i := range 25 {
				k := fmt.Sprintf("k%02d", i)
				ent := Entry{Value: []byte("v")}
				if i >= tc.expired[0] && i < tc.expired[1] {
					ent.Expiration = now + 60
				} else {
					live = append(live, k)
				}
				if err := h.e.Seed(testAccount, testNS, k, ent); err != nil {
					t.Fatal(err)
				}
			}
			h.clock.Advance(time.Minute)
			pages := listAll(t, h, router, testNS, "limit=10")
			var sizes []int
			for _, p := range pages {
				sizes = append(sizes, len(p.keys))
			}
			if !slices.Equal(sizes, tc.sizes) {
				t.Errorf("page sizes %v, want %v", sizes, tc.sizes)
			}
			if got := names(pages...); !slices.Equal(got, live) {
				t.Errorf("listed %v, want %v", got, live)
			}
		})
	}
}

func TestFreezeListings(t *testing.T) {
	_, router := loadSpec(t)
	form := func(meta string) []byte { return jsonForm("new", meta) }
	cases := []struct {
		name string
		// after runs once the listing is frozen, against the live data.
		after func(t *testing.T, h *harness)
		// frozen is what the frozen listing must show: name → metadata
		// ("" = none) and expiration.
		frozen map[string]listedWant
		// live maps keys to the value a read must return ("" = 404).
		live map[string]string
	}{
		{
			name: "a write after the freeze is not listed",
			after: func(t *testing.T, h *harness) {
				mustOK(t, h.do("PUT", valuesURL(h, "d"), form(`{"d":1}`), "Content-Type", formCT))
				mustOK(t, h.do("PUT", h.nsURL("/bulk"), []byte(`[{"key":"e","value":"new","metadata":{"e":1}}]`)))
			},
			frozen: frozenABC,
			live:   map[string]string{"a": "va", "d": "new", "e": "new"},
		},
		{
			name: "a delete after the freeze is still listed",
			after: func(t *testing.T, h *harness) {
				mustOK(t, h.do("DELETE", valuesURL(h, "b"), nil))
				mustOK(t, h.do("POST", h.nsURL("/bulk/delete"), []byte(`["c"]`)))
			},
			frozen: frozenABC,
			live:   map[string]string{"a": "va", "b": "", "c": ""},
		},
		{
			name: "an overwrite after the freeze lists the old metadata and expiration",
			after: func(t *testing.T, h *harness) {
				mustOK(t, h.do("PUT", valuesURL(h, "a")+"?expiration_ttl=600", form(`{"v":2}`), "Content-Type", formCT))
				mustOK(t, h.do("PUT", valuesURL(h, "c"), []byte("new")))
				if r := h.do("GET", h.nsURL("/metadata/a"), nil); string(r.env.Result) != `{"v":2}` {
					t.Errorf("metadata read after the overwrite: %s, want the live {\"v\":2}", r.env.Result)
				}
			},
			frozen: frozenABC,
			live:   map[string]string{"a": "new", "c": "new"},
		},
		{
			name: "a key that expires after the freeze stays listed",
			after: func(t *testing.T, h *harness) {
				h.clock.Advance(2 * time.Hour)
			},
			frozen: frozenABC,
			live:   map[string]string{"a": "va", "c": ""},
		},
		{
			name: "freezing again takes a new snapshot",
			after: func(t *testing.T, h *harness) {
				mustOK(t, h.do("DELETE", valuesURL(h, "a"), nil))
				h.e.FreezeListings(testAccount, testNS)
				mustOK(t, h.do("PUT", valuesURL(h, "z"), []byte("new")))
			},
			frozen: map[string]listedWant{"b": frozenABC["b"], "c": frozenABC["c"]},
			live:   map[string]string{"a": "", "z": "new"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			start := h.clock.Now().Unix()
			mustOK(t, h.do("PUT", valuesURL(h, "a"), jsonForm("va", `{"v":1}`), "Content-Type", formCT))
			mustOK(t, h.do("PUT", valuesURL(h, "b"), []byte("vb")))
			mustOK(t, h.do("PUT", valuesURL(h, "c")+"?expiration_ttl=3600", []byte("vc")))
			if start != frozenStart {
				t.Fatalf("the harness clock starts at %d, frozenABC assumes %d", start, frozenStart)
			}
			h.e.FreezeListings(testAccount, testNS)
			tc.after(t, h)

			checkListing(t, h, router, tc.frozen)
			for k, v := range tc.live {
				r := h.do("GET", valuesURL(h, k), nil)
				if v == "" && r.status != 404 || v != "" && (r.status != 200 || string(r.body) != v) {
					t.Errorf("live read of %q: %d %q, want %q", k, r.status, r.body, v)
				}
			}

			h.e.ThawListings(testAccount, testNS)
			truth := map[string]listedWant{}
			for k, ent := range h.e.Snapshot(testAccount, testNS) {
				truth[k] = listedWant{string(ent.Metadata), ent.Expiration}
			}
			checkListing(t, h, router, truth)
		})
	}

	t.Run("paging over a frozen listing of 2,500 keys", func(t *testing.T) {
		h := newHarness(t, Options{})
		want := map[string]listedWant{}
		for i := range 2500 {
			k := fmt.Sprintf("p/%04d", i)
			if err := h.e.Seed(testAccount, testNS, k, Entry{Value: []byte("v"), Metadata: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}); err != nil {
				t.Fatal(err)
			}
			want[k] = listedWant{fmt.Sprintf(`{"i":%d}`, i), 0}
		}
		h.e.FreezeListings(testAccount, testNS)
		// Deletes throughout the range, writes between the frozen keys.
		var dels []string
		for i := 0; i < 2500; i += 7 {
			dels = append(dels, fmt.Sprintf("p/%04d", i))
		}
		mustOK(t, h.do("POST", h.nsURL("/bulk/delete"), mustJSON(t, dels)))
		mustOK(t, h.do("PUT", h.nsURL("/bulk"), []byte(`[{"key":"p/0500a","value":"v"},{"key":"p/","value":"v"}]`)))
		checkListing(t, h, router, want)
		h.e.ThawListings(testAccount, testNS)
		if p := listAll(t, h, router, testNS, "prefix=p%2F"); len(names(p...)) != 2500-len(dels)+2 {
			t.Errorf("after the thaw %d keys listed, want %d", len(names(p...)), 2500-len(dels)+2)
		}
	})

	t.Run("only the frozen namespace is stale", func(t *testing.T) {
		h := newHarness(t, Options{})
		const other = "other0123456789abcdef0123456789a"
		h.e.FreezeListings(testAccount, testNS) // never written: frozen empty
		h.e.FreezeListings("another-account", testNS)
		mustOK(t, h.do("PUT", valuesURL(h, "k"), []byte("v")))
		otherURL := h.srv.URL + PathPrefix + "/accounts/" + testAccount + "/storage/kv/namespaces/" + other
		mustOK(t, h.do("PUT", otherURL+"/values/k", []byte("v")))
		if got := names(listAll(t, h, router, testNS, "")...); len(got) != 0 {
			t.Errorf("frozen namespace listed %v, want nothing", got)
		}
		if got := names(listAll(t, h, router, other, "")...); !slices.Equal(got, []string{"k"}) {
			t.Errorf("unfrozen namespace listed %v, want [k]", got)
		}
		h.e.ThawListings(testAccount, other) // not frozen: no effect
		h.e.ThawListings(testAccount, testNS)
		if got := names(listAll(t, h, router, testNS, "")...); !slices.Equal(got, []string{"k"}) {
			t.Errorf("thawed namespace listed %v, want [k]", got)
		}
	})

	t.Run("a deleted namespace answers 404 even while frozen", func(t *testing.T) {
		h := newHarness(t, Options{})
		mustOK(t, h.do("PUT", valuesURL(h, "k"), []byte("v")))
		h.e.FreezeListings(testAccount, testNS)
		mustOK(t, h.do("DELETE", h.srv.URL+PathPrefix+"/accounts/"+testAccount+"/storage/kv/namespaces/"+testNS, nil))
		if r := h.do("GET", h.nsURL("/keys"), nil); r.status != 404 || r.code() != 10013 {
			t.Errorf("list of a deleted, frozen namespace: %d %s", r.status, r.body)
		}
	})
}

// listedWant is a key's expected listed metadata ("" = none) and expiration.
type listedWant struct {
	meta string
	exp  int64
}

// frozenStart is the harness clock's start (newFakeClock).
const frozenStart = 1_700_000_000

// frozenABC is the listing of the keys every freeze case starts from.
var frozenABC = map[string]listedWant{
	"a": {`{"v":1}`, 0},
	"b": {"", 0},
	"c": {"", frozenStart + 3600},
}

// checkListing lists the whole namespace ten keys a page (so that paging
// is exercised too) and compares it with want.
func checkListing(t *testing.T, h *harness, router routers.Router, want map[string]listedWant) {
	t.Helper()
	got := map[string]listedWant{}
	var order []string
	for _, p := range listAll(t, h, router, testNS, "limit=10") {
		for _, k := range p.keys {
			var lw listedWant
			lw.meta = string(k["metadata"])
			if e, ok := k["expiration"]; ok {
				if err := json.Unmarshal(e, &lw.exp); err != nil {
					t.Fatalf("expiration %s: %v", e, err)
				}
			}
			got[k.name()] = lw
			order = append(order, k.name())
		}
	}
	if !slices.IsSorted(order) || len(order) != len(got) {
		t.Errorf("listing not in byte order or with repeats: %v", order)
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("listed %q = %+v (present %v), want %+v", k, g, ok, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("listed %q, which should not be", k)
		}
	}
}

func mustOK(t *testing.T, r response) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
