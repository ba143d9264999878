package emulator

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// bulkDecodeNow is the clock of the decoding tests: expirations are judged
// against it.
var bulkDecodeNow = time.Unix(1_700_000_000, 0)

func repeatedItems(n int, tail string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"key":"k%d","value":"v"}`, i)
	}
	b.WriteString(tail)
	return b.String()
}

// bulkPutCases pin the bulk write decoder's verdicts. An accepted body
// (code 0) stores n items, the first of them with value, meta (compacted,
// "" for none) and exp; a refused one answers code with a message holding
// want and stores nothing. Where the message quotes encoding/json, only the
// part the emulator adds is pinned (the item's index, the field's name): the
// rest is the standard library's wording, not Cloudflare's.
var bulkPutCases = []struct {
	name, body string
	code       int
	want       string
	n          int
	value      string
	meta       string
	exp        int64
}{
	{name: "empty array", body: `[]`},
	{name: "whitespace everywhere", body: " [ {\n\"key\" :\t\"k\" ,\r\n \"value\" : \"v\" } , { \"key\":\"k2\",\"value\":\"\"} ] ", n: 2, value: "v"},
	{name: "what follows the array is not read", body: `[{"key":"k","value":"v"}] garbage {`, n: 1, value: "v"},
	{name: "escapes decoded", body: `[{"key":"k","value":"a\"b\\c\/d\n\u00e9\ud83d\ude00"}]`, n: 1, value: "a\"b\\c/d\né😀"},
	{name: "base64 decoded", body: `[{"key":"k","value":"dmFs","base64":true}]`, n: 1, value: "val"},
	{name: "base64 false", body: `[{"key":"k","value":"!","base64":false}]`, n: 1, value: "!"},
	{name: "empty value", body: `[{"key":"k","value":""}]`, n: 1},
	{name: "a repeated field, the later wins", body: `[{"key":"a","value":"v","value":"w"}]`, n: 1, value: "w"},
	{name: "unknown fields skipped", body: `[{"x":{"y":[1,{"z":null}]},"key":"k","value":"v","z":-1.5e3}]`, n: 1, value: "v"},
	{name: "metadata compacted", body: "[{\"key\":\"k\",\"value\":\"v\",\"metadata\": { \"a\" :\n[ 1 , {\"b\":null} ] } }]", n: 1, value: "v", meta: `{"a":[1,{"b":null}]}`},
	{name: "metadata null is none", body: `[{"key":"k","value":"v","metadata":null}]`, n: 1, value: "v"},
	{name: "metadata a string", body: `[{"key":"k","value":"v","metadata":"s"}]`, n: 1, value: "v", meta: `"s"`},
	{name: "expiration_ttl", body: `[{"key":"k","value":"v","expiration_ttl":120}]`, n: 1, value: "v", exp: 1_700_000_120},
	{name: "expiration_ttl with an exponent", body: `[{"key":"k","value":"v","expiration_ttl":1.2E+2}]`, n: 1, value: "v", exp: 1_700_000_120},
	{name: "expiration", body: `[{"key":"k","value":"v","expiration":1700000060}]`, n: 1, value: "v", exp: 1_700_000_060},
	{name: "expiration_ttl wins over expiration", body: `[{"key":"k","value":"v","expiration":1,"expiration_ttl":60}]`, n: 1, value: "v", exp: 1_700_000_060},
	{name: "expiration nulled", body: `[{"key":"k","value":"v","expiration":1,"expiration":null}]`, n: 1, value: "v"},
	{name: "10,000 items", body: repeatedItems(MaxBulkPairs, "]"), n: MaxBulkPairs, value: "v"},

	{name: "empty body", body: ``, code: 10029, want: "the bulk write body must be a JSON array"},
	{name: "object body", body: `{"key":"k","value":"v"}`, code: 10029, want: "must be a JSON array"},
	{name: "string body", body: `"x"`, code: 10029, want: "must be a JSON array"},
	{name: "not JSON", body: `nope`, code: 10029, want: "must be a JSON array"},
	{name: "byte order mark", body: "\xef\xbb\xbf[]", code: 10029, want: "must be a JSON array"},

	{name: "no key", body: `[{"value":"v"}]`, code: 10029, want: "invalid request: item 0 has no key"},
	{name: "null key", body: `[{"key":null,"value":"v"}]`, code: 10029, want: "item 0 has no key"},
	{name: "key set then nulled", body: `[{"key":"k","value":"v","key":null}]`, code: 10029, want: "item 0 has no key"},
	{name: "null element", body: `[null]`, code: 10029, want: "item 0 has no key"},
	{name: "empty key", body: `[{"key":"","value":"v"}]`, code: 10042, want: "illegal key name"},
	{name: "key of 513 bytes", body: `[{"key":"` + strings.Repeat("k", 513) + `","value":"v"}]`, code: 10030, want: "key too long"},
	{name: "no value", body: `[{"key":"k"}]`, code: 10012, want: `malformed value: item 0 ("k") has no value`},
	{name: "null value", body: `[{"key":"k","value":null}]`, code: 10012, want: "has no value"},
	{name: "bad base64", body: `[{"key":"k","value":"!","base64":true}]`, code: 10012, want: `item 0 ("k") is not valid base64`},
	{name: "base64 null keeps true", body: `[{"key":"k","value":"!","base64":true,"base64":null}]`, code: 10012, want: "not valid base64"},
	{name: "metadata too large", body: `[{"key":"k","value":"v","metadata":{"a":"` + strings.Repeat("x", 1100) + `"}}]`, code: 10047, want: "metadata too large"},
	{name: "fractional expiration_ttl", body: `[{"key":"k","value":"v","expiration_ttl":120.5}]`, code: 10034, want: "Invalid expiration_ttl of 120.5"},
	{name: "expiration_ttl 59", body: `[{"key":"k","value":"v","expiration_ttl":59}]`, code: 10034, want: "Invalid expiration_ttl of 59"},
	{name: "expiration 59 s ahead", body: `[{"key":"k","value":"v","expiration":1700000059}]`, code: 10033, want: "Invalid expiration of 1700000059"},
	{name: "negative zero expiration", body: `[{"key":"k","value":"v","expiration":-0}]`, code: 10033, want: "Invalid expiration of -0"},
	{name: "expiration underflows to 0", body: `[{"key":"k","value":"v","expiration":1e-400}]`, code: 10033, want: "Invalid expiration of 0"},

	{name: "value a number", body: `[{"key":"k","value":5}]`, code: 10029, want: "invalid request: item 0: "},
	{name: "the type error names the field", body: `[{"key":"k","value":"v","expiration":"120"}]`, code: 10029, want: "bulkPair.expiration "},
	{name: "expiration_ttl out of range", body: `[{"key":"k","value":"v","expiration_ttl":1e400}]`, code: 10029, want: "bulkPair.expiration_ttl"},
	{name: "element a string", body: `["k"]`, code: 10029, want: "invalid request: item 0: "},
	{name: "syntax error in the second item", body: `[{"key":"k","value":"v"},{"key":"j",}]`, code: 10029, want: "invalid request: item 1: "},
	{name: "a bad second item refuses the first", body: `[{"key":"k","value":"v"},{"key":"","value":"v"}]`, code: 10042, want: "illegal key name"},
	{name: "leading comma", body: `[,{"key":"k","value":"v"}]`, code: 10029, want: "item 0: "},
	{name: "trailing comma", body: `[{"key":"k","value":"v"},]`, code: 10029, want: "item 1: "},
	{name: "missing comma", body: `[{"key":"k","value":"v"} {"key":"j","value":"v"}]`, code: 10029, want: "item 1: "},
	{name: "truncated after a comma", body: `[{"key":"k","value":"v"},`, code: 10029, want: "item 1: "},
	{name: "truncated inside an item", body: `[{"key":"k","val`, code: 10029, want: "item 0: "},
	{name: "truncated after an item", body: `[{"key":"k","value":"v"}`, code: 10029, want: "invalid request: malformed JSON array: "},
	{name: "truncated after the bracket", body: `[`, code: 10029, want: "malformed JSON array: "},
	{name: "misplaced brace", body: `[{"key":"k","value":"v"}}`, code: 10029, want: "malformed JSON array: "},

	{name: "10,001 items", body: repeatedItems(MaxBulkPairs+1, "]"), code: 10029, want: "a bulk write body holds at most 10000 items"},
	{name: "10,000 items and garbage", body: repeatedItems(MaxBulkPairs, " x"), code: 10029, want: "holds at most 10000 items"},
	{name: "10,000 items and a brace", body: repeatedItems(MaxBulkPairs, "}"), code: 10029, want: "malformed JSON array"},
}

func TestBulkPutDecode(t *testing.T) {
	for _, tc := range bulkPutCases {
		t.Run(tc.name, func(t *testing.T) {
			muts, aerr := decodeBulkPut([]byte(tc.body), bulkDecodeNow)
			if tc.code != 0 {
				if aerr == nil || aerr.status != http.StatusBadRequest || aerr.code != tc.code || !strings.Contains(aerr.msg, tc.want) {
					t.Fatalf("verdict %+v, want 400 code %d with a message holding %q", aerr, tc.code, tc.want)
				}
				if muts != nil {
					t.Fatalf("refused, yet %d mutations came back", len(muts))
				}
				return
			}
			if aerr != nil {
				t.Fatalf("refused: %d %s", aerr.code, aerr.msg)
			}
			if len(muts) != tc.n {
				t.Fatalf("%d mutations, want %d", len(muts), tc.n)
			}
			if tc.n == 0 {
				return
			}
			m := muts[0]
			if m.kind != recPut || string(m.value) != tc.value || string(m.meta) != tc.meta || (m.meta == nil) != (tc.meta == "") || m.exp != tc.exp {
				t.Fatalf("first mutation: kind %d value %q metadata %q expiration %d; want value %q metadata %q expiration %d",
					m.kind, m.value, m.meta, m.exp, tc.value, tc.meta, tc.exp)
			}
		})
	}
}

// TestBulkDeleteDecode pins the bulk delete decoder's verdicts.
func TestBulkDeleteDecode(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		keys       []string
		want       string
	}{
		{"keys", `["a","\u00e9","b\/c"]`, []string{"a", "é", "b/c"}, ""},
		{"empty array", `[]`, nil, ""},
		{"null", `["a",null]`, nil, "item 1 is not a key name string"},
		{"number", `[1]`, nil, "item 0 is not a key name string"},
		{"object", `[{"key":"a"}]`, nil, "item 0 is not a key name string"},
		{"broken string", `["a`, nil, "item 0 is not a key name string"},
		{"empty key", `[""]`, nil, "illegal key name"},
		{"not an array", `"a"`, nil, "bulk delete body must be a JSON array"},
		{"truncated", `["a"`, nil, "malformed JSON array: EOF"},
		{"10,001 keys", `[` + strings.Repeat(`"k",`, MaxBulkPairs) + `"k"]`, nil, "a bulk delete body holds at most 10000 items"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			muts, aerr := decodeBulkDelete([]byte(tc.body))
			if tc.want != "" {
				if aerr == nil || !strings.Contains(aerr.msg, tc.want) {
					t.Fatalf("verdict %v, want an error containing %q", aerr, tc.want)
				}
				return
			}
			if aerr != nil {
				t.Fatalf("rejected: %s", aerr.msg)
			}
			var keys []string
			for _, m := range muts {
				if m.kind != recDelete {
					t.Fatalf("mutation kind %d for %q, want a delete", m.kind, m.key)
				}
				keys = append(keys, m.key)
			}
			if fmt.Sprint(keys) != fmt.Sprint(tc.keys) {
				t.Fatalf("keys %q, want %q", keys, tc.keys)
			}
		})
	}
}

func TestReadBulkBody(t *testing.T) {
	body := []byte(`["a","b"]`)
	for _, tc := range []struct {
		name          string
		limit         int64
		contentLength int64
		wantStatus    int
	}{
		{"at the limit", int64(len(body)), int64(len(body)), 0},
		{"at the limit, length unknown", int64(len(body)), -1, 0},
		{"declared length too small", int64(len(body)), 1, 0},
		{"one byte over", int64(len(body)) - 1, int64(len(body)), http.StatusRequestEntityTooLarge},
		{"one byte over, length unknown", int64(len(body)) - 1, -1, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Body: io.NopCloser(bytes.NewReader(body)), ContentLength: tc.contentLength}
			got, aerr := readBulkBody(r, tc.limit, "bulk delete")
			if tc.wantStatus != 0 {
				if aerr == nil || aerr.status != tc.wantStatus || aerr.code != 10024 ||
					aerr.msg != fmt.Sprintf("request too large: a bulk delete body must be at most %d bytes", tc.limit) {
					t.Fatalf("got %q, %v; want a %d", got, aerr, tc.wantStatus)
				}
				return
			}
			if aerr != nil || !bytes.Equal(got, body) {
				t.Fatalf("got %q, %v", got, aerr)
			}
		})
	}
	t.Run("read error", func(t *testing.T) {
		r := &http.Request{Body: io.NopCloser(io.MultiReader(bytes.NewReader(body), errReader{})), ContentLength: -1}
		if _, aerr := readBulkBody(r, 1000, "bulk write"); aerr == nil || aerr.code != 10029 || !strings.Contains(aerr.msg, "boom") {
			t.Fatalf("got %v", aerr)
		}
	})
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, fmt.Errorf("boom") }

// benchBulkPutBody is a bulk write body like the benchmark's: n items of
// size bytes of ASCII text with an occasional quote, backslash and newline,
// every 10th item with small metadata.
func benchBulkPutBody(n, size int) []byte {
	var buf bytes.Buffer
	buf.WriteByte('[')
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do \"eiusmod\" tempor incididunt in C:\\labore.\n")
	for i := range n {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"key":"site/page-%07d.html","value":"`, i)
		for w := 0; w < size; {
			c := line[w%len(line)]
			switch c {
			case '"', '\\':
				buf.WriteByte('\\')
				buf.WriteByte(c)
			case '\n':
				buf.WriteString(`\n`)
			default:
				buf.WriteByte(c)
			}
			w++
		}
		buf.WriteByte('"')
		if i%10 == 0 {
			fmt.Fprintf(&buf, `,"metadata":{"etag":"%08x","size":%d}`, i, size)
		}
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	return buf.Bytes()
}

// BenchmarkBulkPutDecode reads and decodes a 5,000-pair bulk write of
// 1 KiB values, as handleBulkPut does.
func BenchmarkBulkPutDecode(b *testing.B) {
	body := benchBulkPutBody(5000, 1024)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		r := &http.Request{Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
		data, aerr := readBulkBody(r, MaxBulkRequestBytes, "bulk write")
		if aerr != nil {
			b.Fatal(aerr.msg)
		}
		muts, aerr := decodeBulkPut(data, bulkDecodeNow)
		if aerr != nil || len(muts) != 5000 {
			b.Fatalf("%d mutations, %v", len(muts), aerr)
		}
	}
}
