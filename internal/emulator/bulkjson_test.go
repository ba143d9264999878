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

// bulkDecodeCases are bodies where a hand-written parser is likely to part
// from encoding/json. want, when set, is the bulk write verdict: "ok" or a
// substring of the error message; value, when set, the first item's value.
var bulkDecodeCases = []struct {
	name, body  string
	want, value string
}{
	{"empty array", `[]`, "ok", ""},
	{"empty array in whitespace", " \t\r\n[ \n] \n", "ok", ""},
	{"whitespace everywhere", " [ {\n\"key\" :\t\"k\" ,\r\n \"value\" : \"v\" } , { \"key\":\"k2\",\"value\":\"\"} ] ", "ok", "v"},
	{"trailing garbage after the array", `[{"key":"k","value":"v"}] garbage {`, "ok", "v"},
	{"byte order mark", "\xef\xbb\xbf[]", "must be a JSON array", ""},
	{"empty body", ``, "must be a JSON array", ""},
	{"object body", `{"key":"k","value":"v"}`, "must be a JSON array", ""},
	{"string body", `"x"`, "must be a JSON array", ""},
	{"not JSON", `nope`, "must be a JSON array", ""},

	{"simple escapes", `[{"key":"k","value":"a\"b\\c\/d\b\f\n\r\t"}]`, "ok", "a\"b\\c/d\b\f\n\r\t"},
	{"unicode escapes", `[{"key":"k","value":"\u0041\u00e9\u20AC\u0000"}]`, "ok", "Aé€\x00"},
	{"surrogate pair", `[{"key":"k","value":"\ud83d\ude00"}]`, "ok", "😀"},
	{"lone high surrogate", `[{"key":"k","value":"\ud83dx"}]`, "ok", "\uFFFDx"},
	{"lone high surrogate at the end", `[{"key":"k","value":"\ud83d"}]`, "ok", "\uFFFD"},
	{"lone low surrogate", `[{"key":"k","value":"\ude00\ude00"}]`, "ok", "\uFFFD\uFFFD"},
	{"high surrogate then plain escape", `[{"key":"k","value":"\ud83d\u0041"}]`, "ok", "\uFFFDA"},
	{"high surrogate then newline escape", `[{"key":"k","value":"\ud83d\n"}]`, "ok", "\uFFFD\n"},
	{"two highs then a low", `[{"key":"k","value":"\uD83D\uD83D\uDE00"}]`, "ok", "\uFFFD😀"},
	{"surrogate pair with a bad second hex digit", `[{"key":"k","value":"\ud83d\udeZ0"}]`, "in \\u hexadecimal character escape", ""},
	{"invalid UTF-8", "[{\"key\":\"k\",\"value\":\"a\xffb\xfe\"}]", "ok", "a\uFFFDb\uFFFD"},
	{"truncated UTF-8 sequence", "[{\"key\":\"k\",\"value\":\"\xe2\x82\"}]", "ok", "\uFFFD\uFFFD"},
	{"UTF-8 encoded surrogate", "[{\"key\":\"k\",\"value\":\"\xed\xa0\x80\"}]", "ok", "\uFFFD\uFFFD\uFFFD"},
	{"overlong UTF-8", "[{\"key\":\"k\",\"value\":\"\xc0\xaf\"}]", "ok", "\uFFFD\uFFFD"},
	{"literal replacement character", "[{\"key\":\"k\",\"value\":\"\xef\xbf\xbd\xf0\x9f\x98\x80\"}]", "ok", "\uFFFD😀"},
	{"invalid UTF-8 after an escape", "[{\"key\":\"k\",\"value\":\"\\n\xff\"}]", "ok", "\n\uFFFD"},
	{"invalid UTF-8 in a key", "[{\"key\":\"k\xff\",\"value\":\"v\"}]", "ok", "v"},
	{"control character", "[{\"key\":\"k\",\"value\":\"a\x01b\"}]", `invalid character '\x01' in string literal`, ""},
	{"raw newline", "[{\"key\":\"k\",\"value\":\"a\nb\"}]", `invalid character '\n' in string literal`, ""},
	{"DEL is fine", "[{\"key\":\"k\",\"value\":\"\x7f\"}]", "ok", "\x7f"},
	{"bad escape", `[{"key":"k","value":"\x"}]`, "in string escape code", ""},
	{"single quote escape", `[{"key":"k","value":"\'"}]`, `invalid character '\'' in string escape code`, ""},
	{"bad unicode escape", `[{"key":"k","value":"\u12g4"}]`, "in \\u hexadecimal character escape", ""},
	{"non-ASCII byte in an escape", "[{\"key\":\"k\",\"value\":\"\\\xff\"}]", "in string escape code", ""},

	{"null key", `[{"key":null,"value":"v"}]`, "item 0 has no key", ""},
	{"null value", `[{"key":"k","value":null}]`, "has no value", ""},
	{"null element", `[null]`, "item 0 has no key", ""},
	{"key set then nulled", `[{"key":"k","value":"v","key":null}]`, "has no key", ""},
	{"duplicate key, the later wins", `[{"key":"a","value":"v","key":"b"}]`, "ok", "v"},
	{"duplicate value, the later wins", `[{"key":"a","value":"v","value":"w"}]`, "ok", "w"},
	{"upper-case names", `[{"KEY":"k","VALUE":"v","BASE64":true}]`, "not valid base64", ""},
	{"mixed-case names", `[{"Key":"k","vAlUe":"dg==","Base64":true}]`, "ok", "dg=="},
	{"Kelvin sign matches k", `[{"\u212aey":"k","value":"v"}]`, "ok", "v"},
	{"long s matches s", `[{"key":"k","value":"dg==","ba\u017fe64":true}]`, "ok", "dg=="},
	{"escaped field name", `[{"\u006bey":"k","value":"v"}]`, "ok", "v"},
	{"exact and folded duplicates", `[{"key":"a","KEY":"b","value":"v"}]`, "ok", "v"},
	{"base64 null keeps true", `[{"key":"k","value":"!","base64":true,"base64":null}]`, "not valid base64", ""},
	{"base64 false", `[{"key":"k","value":"!","base64":false}]`, "ok", "!"},
	{"base64 with newlines", `[{"key":"k","value":"dm\ndn","base64":true}]`, "ok", "dm\ndn"},
	{"unknown fields skipped", `[{"x":{"y":[1,2,{"z":null}]},"key":"k","y":"\u00e9","value":"v","z":-1.5e3}]`, "ok", "v"},
	{"unknown field with a bad value", `[{"x":[1,}],"key":"k","value":"v"}]`, "invalid character '}' looking for beginning of value", ""},

	{"nested metadata", `[{"key":"k","value":"v","metadata":{"a":[1,{"b":null}],"c":"\u00e9","d":true}}]`, "ok", "v"},
	{"metadata with whitespace", "[{\"key\":\"k\",\"value\":\"v\",\"metadata\": { \"a\" :\n[ 1 , 2 ] } }]", "ok", "v"},
	{"metadata null", `[{"key":"k","value":"v","metadata":null}]`, "ok", "v"},
	{"metadata string", `[{"key":"k","value":"v","metadata":"s\"x"}]`, "ok", "v"},
	{"metadata number", `[{"key":"k","value":"v","metadata":-0.5e-3}]`, "ok", "v"},
	{"metadata replaced by a later one", `[{"key":"k","value":"v","metadata":{"a":1},"METADATA":[2]}]`, "ok", "v"},
	{"metadata too large", `[{"key":"k","value":"v","metadata":{"a":"` + strings.Repeat("x", 1100) + `"}}]`, "metadata too large", ""},
	{"metadata nested to the limit", `[{"key":"k","value":"v","metadata":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}]`, "metadata too large", ""},
	{"metadata nested past the limit", `[{"key":"k","value":"v","metadata":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}]`, "invalid character '[' exceeded max depth", ""},
	{"element nested to the limit", `[` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `]`, "cannot unmarshal array into Go value of type emulator.bulkPair", ""},
	{"element nested past the limit", `[` + strings.Repeat("{\"a\":", 10001) + `1` + strings.Repeat("}", 10001) + `]`, "invalid character '{' exceeded max depth", ""},

	{"integral expiration_ttl", `[{"key":"k","value":"v","expiration_ttl":120}]`, "ok", "v"},
	{"exponent expiration_ttl", `[{"key":"k","value":"v","expiration_ttl":1.2E+2}]`, "ok", "v"},
	{"fractional expiration_ttl", `[{"key":"k","value":"v","expiration_ttl":120.5}]`, "Invalid expiration_ttl of 120.5", ""},
	{"negative zero expiration", `[{"key":"k","value":"v","expiration":-0}]`, "Invalid expiration of -0", ""},
	{"expiration and ttl", `[{"key":"k","value":"v","expiration":1,"expiration_ttl":60}]`, "ok", "v"},
	{"expiration nulled", `[{"key":"k","value":"v","expiration":1,"expiration":null}]`, "ok", "v"},
	{"expiration as a string", `[{"key":"k","value":"v","expiration":"120"}]`, "json: cannot unmarshal string into Go struct field bulkPair.expiration of type float64", ""},
	{"expiration out of range", `[{"key":"k","value":"v","expiration_ttl":1e400}]`, "json: cannot unmarshal number 1e400 into Go struct field bulkPair.expiration_ttl of type float64", ""},
	{"expiration underflow", `[{"key":"k","value":"v","expiration":1e-400}]`, "Invalid expiration of 0", ""},
	{"ttl as a bool", `[{"key":"k","value":"v","expiration_ttl":true}]`, "cannot unmarshal bool into Go struct field bulkPair.expiration_ttl of type float64", ""},
	{"value a number", `[{"key":"k","value":5}]`, "json: cannot unmarshal number into Go struct field bulkPair.value of type string", ""},
	{"key an object", `[{"key":{"a":1},"value":"v"}]`, "cannot unmarshal object into Go struct field bulkPair.key of type string", ""},
	{"key an array", `[{"key":[],"value":"v"}]`, "cannot unmarshal array into Go struct field bulkPair.key of type string", ""},
	{"base64 a string", `[{"key":"k","value":"v","base64":"true"}]`, "cannot unmarshal string into Go struct field bulkPair.base64 of type bool", ""},
	{"first type error wins", `[{"value":1,"key":2}]`, "bulkPair.value of type string", ""},
	{"syntax error beats an earlier type error", `[{"value":1,"key":"k",}]`, `invalid character '}' looking for beginning of object key string`, ""},
	{"type error, then the key check", `[{"key":"","value":1}]`, "bulkPair.value", ""},

	{"number element", `[1]`, "cannot unmarshal number into Go value of type emulator.bulkPair", ""},
	{"string element", `["k"]`, "cannot unmarshal string into Go value of type emulator.bulkPair", ""},
	{"bool element", `[false]`, "cannot unmarshal bool into Go value of type emulator.bulkPair", ""},
	{"array element", `[[{"key":"k","value":"v"}]]`, "cannot unmarshal array into Go value of type emulator.bulkPair", ""},
	{"number element at EOF", `[12`, "cannot unmarshal number", ""},
	{"number element followed by garbage", `[0x]`, "cannot unmarshal number", ""},
	{"literal element followed by garbage", `[nullx]`, "item 0 has no key", ""},
	{"string element followed by garbage", `["a"b]`, "cannot unmarshal string", ""},

	{"leading zero", `[{"key":"k","value":"v","expiration":01}]`, "invalid character '1' after object key:value pair", ""},
	{"bare minus", `[{"key":"k","value":"v","expiration":-}]`, "invalid character '}' in numeric literal", ""},
	{"bare decimal point", `[{"key":"k","value":"v","expiration":1.}]`, "invalid character '}' after decimal point in numeric literal", ""},
	{"bare exponent", `[{"key":"k","value":"v","expiration":1e}]`, "invalid character '}' in exponent of numeric literal", ""},
	{"bare exponent sign", `[{"key":"k","value":"v","expiration":1e+}]`, "in exponent of numeric literal", ""},
	{"leading decimal point", `[{"key":"k","value":"v","expiration":.5}]`, "invalid character '.' looking for beginning of value", ""},
	{"plus sign", `[{"key":"k","value":"v","expiration":+5}]`, "invalid character '+' looking for beginning of value", ""},
	{"misspelt null", `[{"key":nul}]`, "invalid character '}' in literal null (expecting 'l')", ""},
	{"misspelt true", `[{"key":"k","value":"v","base64":trUe}]`, "invalid character 'U' in literal true (expecting 'u')", ""},
	{"misspelt false", `[{"key":"k","value":"v","base64":fals}]`, "in literal false (expecting 'e')", ""},
	{"unquoted name", `[{key:"k"}]`, "invalid character 'k' looking for beginning of object key string", ""},
	{"missing colon", `[{"key" "k"}]`, `invalid character '"' after object key`, ""},
	{"missing comma in object", `[{"key":"k" "value":"v"}]`, `invalid character '"' after object key:value pair`, ""},
	{"trailing comma in object", `[{"key":"k",}]`, "looking for beginning of object key string", ""},

	{"leading comma", `[,{"key":"k","value":"v"}]`, "item 0: invalid character ',' looking for beginning of value", ""},
	{"trailing comma", `[{"key":"k","value":"v"},]`, "item 1: invalid character ']' looking for beginning of value", ""},
	{"missing comma", `[{"key":"k","value":"v"} {"key":"j","value":"v"}]`, "item 1: expected comma after array element", ""},
	{"misplaced brace", `[}`, "malformed JSON array: invalid character '}' looking for beginning of value", ""},
	{"misplaced brace after an element", `[{"key":"k","value":"v"}}`, "malformed JSON array: invalid character '}' after array element", ""},

	{"truncated: bracket", `[`, "malformed JSON array: EOF", ""},
	{"truncated: brace", `[{`, "item 0: unexpected EOF", ""},
	{"truncated: name", `[{"key"`, "unexpected EOF", ""},
	{"truncated: colon", `[{"key":`, "unexpected EOF", ""},
	{"truncated: string", `[{"key":"k`, "unexpected EOF", ""},
	{"truncated: escape", `[{"key":"k\`, "unexpected EOF", ""},
	{"truncated: unicode escape", `[{"key":"k\u00`, "unexpected EOF", ""},
	{"truncated: after a value", `[{"key":"k"`, "unexpected EOF", ""},
	{"truncated: number", `[{"expiration":12`, "unexpected EOF", ""},
	{"truncated: literal", `[{"base64":tr`, "unexpected EOF", ""},
	{"truncated: after an element", `[{"key":"k","value":"v"}`, "malformed JSON array: EOF", ""},
	{"truncated: after a comma", `[{"key":"k","value":"v"},`, "item 1: EOF", ""},
	{"truncated: whitespace after a comma", "[{\"key\":\"k\",\"value\":\"v\"}, \n", "item 1: EOF", ""},
	{"truncated: minus element", `[-`, "item 0: unexpected EOF", ""},
	{"truncated: decimal element", `[1.`, "item 0: unexpected EOF", ""},
	{"truncated: literal element", `[tru`, "item 0: unexpected EOF", ""},

	{"10,000 items", repeatedItems(MaxBulkPairs, "]"), "ok", "v"},
	{"10,001 items", repeatedItems(MaxBulkPairs+1, "]"), "holds at most 10000 items", ""},
	{"10,000 items and garbage", repeatedItems(MaxBulkPairs, " x"), "holds at most 10000 items", ""},
	{"10,000 items and a brace", repeatedItems(MaxBulkPairs, "}"), "malformed JSON array", ""},
}

func TestBulkDecodeMatchesEncodingJSON(t *testing.T) {
	for _, tc := range bulkDecodeCases {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			if d := diffBulkDecode(body, bulkDecodeNow); d != "" {
				t.Fatalf("%.200q: %s", body, d)
			}
			muts, aerr := decodeBulkPut(body, bulkDecodeNow)
			if tc.want == "ok" && aerr != nil {
				t.Fatalf("rejected: %d %s", aerr.code, aerr.msg)
			}
			if tc.want != "ok" && (aerr == nil || !strings.Contains(aerr.msg, tc.want)) {
				t.Fatalf("verdict %v, want an error containing %q", aerr, tc.want)
			}
			if tc.value != "" {
				items, _ := fastDecodeItems(body)
				if len(items) == 0 || string(items[0].value) != tc.value {
					t.Fatalf("items %+v, want the first value %q", items, tc.value)
				}
			}
			if tc.want == "ok" && len(muts) == 0 && tc.value != "" {
				t.Fatal("accepted but produced no mutation")
			}
		})
	}
}

// TestBulkDeleteDecode checks the delete decoder's own verdicts on a few
// bodies (the differential test covers the rest).
func TestBulkDeleteDecode(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		keys       []string
		want       string
	}{
		{"keys", `["a","\u00e9","b\/c"]`, []string{"a", "é", "b/c"}, ""},
		{"null", `["a",null]`, nil, "item 1 is not a key name string"},
		{"number", `[1]`, nil, "item 0 is not a key name string"},
		{"object", `[{"key":"a"}]`, nil, "item 0 is not a key name string"},
		{"broken string", `["a`, nil, "item 0 is not a key name string"},
		{"empty key", `[""]`, nil, "illegal key name"},
		{"not an array", `"a"`, nil, "bulk delete body must be a JSON array"},
		{"truncated", `["a"`, nil, "malformed JSON array: EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := diffBulkDecode([]byte(tc.body), bulkDecodeNow); d != "" {
				t.Fatal(d)
			}
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

// FuzzBulkDecode checks that the bulk body parser agrees with the
// encoding/json decoding it replaced: the same verdict (status, code and
// message) for bulk writes and deletes, and the same decoded fields for
// every item.
func FuzzBulkDecode(f *testing.F) {
	for _, tc := range bulkDecodeCases {
		if len(tc.body) < 4096 {
			f.Add([]byte(tc.body))
		}
	}
	f.Add(benchBulkPutBody(3, 40))
	f.Add([]byte(`["a","\ud800\udc00",null,"\u00"]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if d := diffBulkDecode(body, bulkDecodeNow); d != "" {
			t.Fatalf("%q: %s", body, d)
		}
	})
}

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

// BenchmarkBulkPutDecode decodes a 5,000-pair bulk write of 1 KiB values
// with the encoding/json Decoder loop the emulator used to run and with the
// parser that replaced it (reading the body included in both).
func BenchmarkBulkPutDecode(b *testing.B) {
	body := benchBulkPutBody(5000, 1024)
	b.Run("encoding_json", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			muts, aerr := refDecodeBulkPut(bytes.NewReader(body), MaxBulkRequestBytes, bulkDecodeNow)
			if aerr != nil || len(muts) != 5000 {
				b.Fatalf("%d mutations, %v", len(muts), aerr)
			}
		}
	})
	b.Run("fast", func(b *testing.B) {
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
	})
}
