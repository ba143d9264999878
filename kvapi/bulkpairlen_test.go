package kvapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
)

// encodedBulk is the body BulkPut sends for pairs, read from the encoder
// itself; ok is false when BulkPut would refuse the pairs.
func encodedBulk(t testing.TB, pairs []BulkPair) (body []byte, ok bool) {
	t.Helper()
	items, size, err := encodeBulk(pairs, testNow)
	if err != nil {
		return nil, false
	}
	body, err = io.ReadAll(newBulkBody(items))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(body)) != size {
		t.Fatalf("encodeBulk announced %d bytes, the body has %d", size, len(body))
	}
	return body, true
}

// checkBulkPairLen compares BulkPairLen with the encoder for pairs: the sum
// plus the closing ']' is the body's length, each pair alone and in the
// second position costs its BulkPairLen, and the body decodes back to the
// pairs (so the bytes counted are the right ones).
func checkBulkPairLen(t testing.TB, pairs ...BulkPair) {
	t.Helper()
	body, ok := encodedBulk(t, pairs)
	if !ok {
		t.Fatalf("pairs refused: %+v", pairs)
	}
	want := int64(1)
	for _, p := range pairs {
		want += BulkPairLen(p)
	}
	if int64(len(body)) != want {
		t.Fatalf("BulkPairLen adds up to %d (with the ']'), the encoder wrote %d bytes: %q", want, len(body), truncate(string(body)))
	}
	first := BulkPair{Key: "first", Value: []byte("x")}
	for _, p := range pairs {
		alone, _ := encodedBulk(t, []BulkPair{p})
		second, _ := encodedBulk(t, []BulkPair{first, p})
		onItsOwn := int64(len(alone)) - 1
		afterAnother := int64(len(second)) - 1 - BulkPairLen(first)
		if got := BulkPairLen(p); got != onItsOwn || got != afterAnother {
			t.Fatalf("key %q: BulkPairLen %d; the encoder wrote %d bytes for it alone, %d after another pair",
				p.Key, got, onItsOwn, afterAnother)
		}
	}
	var decoded []struct {
		Key      string          `json:"key"`
		Value    string          `json:"value"`
		Base64   bool            `json:"base64"`
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(body, &decoded); err != nil || len(decoded) != len(pairs) {
		t.Fatalf("body does not decode to %d pairs (%v): %q", len(pairs), err, truncate(string(body)))
	}
	for i, d := range decoded {
		v := []byte(d.Value)
		if d.Base64 {
			v, _ = base64.StdEncoding.DecodeString(d.Value)
		}
		if d.Key != pairs[i].Key || !bytes.Equal(v, pairs[i].Value) {
			t.Fatalf("pair %d decodes to key %q value %q, want %q %q", i, d.Key, v, pairs[i].Key, pairs[i].Value)
		}
	}
}

func TestBulkPairLen(t *testing.T) {
	exp := testNow.Unix() + 3600
	for name, p := range map[string]BulkPair{
		"empty value":            {Key: "k"},
		"plain":                  {Key: "site/index.html", Value: []byte("<!doctype html><p>hello & goodbye</p>")},
		"escapes":                {Key: "k", Value: []byte("\"quoted\"\\ \n\r\t\x00\x01\x1f end")},
		"escaped key":            {Key: "a\"b\\c\nd\x01", Value: []byte("v")},
		"multibyte text":         {Key: "日本語/ключ", Value: []byte("héllo wörld ✓ 日本語 \U0001F600 \u2028\u2029")},
		"invalid utf8, 1 byte":   {Key: "k", Value: []byte{0xff}},
		"invalid utf8, 2 bytes":  {Key: "k", Value: []byte{0xff, 0xfe}},
		"invalid utf8, 3 bytes":  {Key: "k", Value: []byte{0xc3, 0x28, 0xa0}},
		"invalid utf8, 4 bytes":  {Key: "k", Value: []byte("ab\xffc")},
		"ttl":                    {Key: "k", Value: []byte("v"), ExpirationTTL: MinTTLSeconds},
		"expiration":             {Key: "k", Value: []byte("v"), Expiration: exp},
		"ttl wins":               {Key: "k", Value: []byte("v"), Expiration: exp, ExpirationTTL: 86400},
		"metadata":               {Key: "k", Value: []byte("v"), Metadata: json.RawMessage(`{"a":1}`)},
		"metadata spaced":        {Key: "k", Value: []byte("v"), Metadata: json.RawMessage(" {\n\t\"a b\" : [1, 2],\r\"s\": \"x \\\" } y\" } ")},
		"metadata escaped slash": {Key: "k", Value: []byte("v"), Metadata: json.RawMessage(`{"p": "a\\", "q" : "\" "}`)},
		"everything":             {Key: "k", Value: []byte{0, 0xff}, Metadata: json.RawMessage(`{ "x": null }`), ExpirationTTL: 123456789},
		"longest key":            {Key: strings.Repeat("\x1f", MaxKeyBytes), Value: []byte("v")},
		"long text":              {Key: "k", Value: bytes.Repeat([]byte("0123456789abcde\""), 4096)},
	} {
		t.Run(name, func(t *testing.T) { checkBulkPairLen(t, p) })
	}
	// The wire form written out, so that a change of the framing shows here
	// as well as in the comparison with the encoder. Each body's last byte
	// is its closing ']'.
	for _, tc := range []struct {
		p    BulkPair
		body string
	}{
		{BulkPair{Key: "k", Value: []byte("v")}, `[{"key":"k","value":"v"}]`},
		{BulkPair{Key: "k", Value: []byte{0xff}, ExpirationTTL: 60, Metadata: json.RawMessage(`{ }`)},
			`[{"key":"k","value":"/w==","base64":true,"expiration_ttl":60,"metadata":{}}]`},
	} {
		if got, want := BulkPairLen(tc.p), int64(len(tc.body)-1); got != want {
			t.Errorf("BulkPairLen(%+v) = %d, want %d for %s", tc.p, got, want, tc.body)
		}
		if body, _ := encodedBulk(t, []BulkPair{tc.p}); string(body) != tc.body {
			t.Errorf("encoded %s, want %s", body, tc.body)
		}
	}
}

func TestBulkPairLenRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte("abc /\"\\\n\r\t\x00\x1f\x7f\x80\xc3\xa9\xe2\x80\xa8\xff")
	gen := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			if r.IntN(3) == 0 {
				b[i] = byte(r.IntN(256))
			} else {
				b[i] = alphabet[r.IntN(len(alphabet))]
			}
		}
		return b
	}
	for range 500 {
		pairs := make([]BulkPair, 1+r.IntN(4))
		for i := range pairs {
			p := &pairs[i]
			p.Key = strings.ToValidUTF8(string(gen(1+r.IntN(40))), "?")
			if p.Key == "." || p.Key == ".." {
				p.Key = "k"
			}
			p.Value = gen(r.IntN(300))
			if r.IntN(2) == 0 {
				p.Value = []byte(strings.ToValidUTF8(string(p.Value), "\u2028"))
			}
			switch r.IntN(3) {
			case 0:
				p.ExpirationTTL = MinTTLSeconds + r.Int64N(1<<40)
			case 1:
				p.Expiration = testNow.Unix() + MinExpirationAheadSeconds + r.Int64N(1<<40)
			}
			if r.IntN(2) == 0 {
				md, _ := json.MarshalIndent(map[string]string{"s": string(gen(r.IntN(20)))}, " ", "\t")
				p.Metadata = md
			}
		}
		checkBulkPairLen(t, pairs...)
	}
}

// TestBulkPairLenOnTheWire checks the sum against what a server receives
// from BulkPut, Content-Length and body.
func TestBulkPairLenOnTheWire(t *testing.T) {
	pairs := []BulkPair{
		{Key: "a", Value: []byte("plain")},
		{Key: "b\"", Value: []byte{0xff, 0, 1}, ExpirationTTL: 3600},
		{Key: "c", Value: []byte("tab\there ✓"), Metadata: json.RawMessage(`{ "k" : "v" }`)},
	}
	want := int64(1)
	for _, p := range pairs {
		want += BulkPairLen(p)
	}
	var gotLen, gotBody int64
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		gotLen = r.ContentLength
		gotBody, _ = io.Copy(io.Discard, r.Body)
		writeOK(w, "null")
	})
	if _, err := c.BulkPut(context.Background(), testNS, pairs); err != nil {
		t.Fatal(err)
	}
	if gotLen != want || gotBody != want {
		t.Fatalf("server saw Content-Length %d and %d body bytes; BulkPairLen adds up to %d", gotLen, gotBody, want)
	}
}

func FuzzBulkPairLen(f *testing.F) {
	f.Add("k", []byte("v"), []byte(nil), int64(0), int64(0))
	f.Add("a\"b", []byte("\x00\xff\"\\"), []byte(`{ "a" : "b c" }`), int64(0), int64(3600))
	f.Add("日本", []byte("✓ \u2028 text"), []byte(`{"x":[1, 2]}`), testNow.Unix()+600, int64(0))
	f.Fuzz(func(t *testing.T, key string, value, metadata []byte, exp, ttl int64) {
		p := BulkPair{Key: key, Value: value, Metadata: metadata, Expiration: exp, ExpirationTTL: ttl}
		if _, ok := encodedBulk(t, []BulkPair{p}); !ok {
			return // refused by BulkPut: no body to measure
		}
		checkBulkPairLen(t, p)
		if got, bound := BulkPairLen(p), BulkPairLenBound(len(key), len(value), len(metadata)); got > bound {
			t.Fatalf("BulkPairLen %d over BulkPairLenBound %d", got, bound)
		}
	})
}

// TestBulkPairLenBoundHolds: the bound is reached, or nearly, by the worst
// values (every byte escaped as \u00XX; bytes that are not UTF-8, base64'd),
// and never passed.
func TestBulkPairLenBoundHolds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pair  BulkPair
		slack int64 // how far under the bound the pair may stay
	}{
		{"controls", BulkPair{Key: "\x01\x02", Value: bytes.Repeat([]byte{0x1f}, 1000), ExpirationTTL: math.MaxInt64}, 3},
		{"not UTF-8", BulkPair{Key: "k", Value: bytes.Repeat([]byte{0xff}, 999)}, 6*999 + 40},
		{"metadata", BulkPair{Key: "k", Value: []byte("v"), Metadata: []byte(`{"a":1}`), Expiration: 1 << 40}, 40},
		{"empty", BulkPair{Key: "k"}, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := BulkPairLen(tc.pair)
			bound := BulkPairLenBound(len(tc.pair.Key), len(tc.pair.Value), len(tc.pair.Metadata))
			if got > bound || bound-got > tc.slack {
				t.Errorf("BulkPairLen %d, bound %d: want the bound at most %d over", got, bound, tc.slack)
			}
		})
	}
}
