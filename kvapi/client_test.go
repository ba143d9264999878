package kvapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var nastyKeys = []string{
	"a/b", "/leading", "trailing/", "a//b", "a/../b", "../up", "./here", "..a", "a..", "...",
	"a?b=c", "a#frag", "100%", "%2F", "%zz", "a%20b", "with space", " lead", "trail ",
	"a:b", "wow!", "a&b=c;d,e", "+plus+", "tilde~", "back\\slash", "quo\"te", "<html>",
	"tab\there", "new\nline", "ключ/значение", "日本語キー", "emoji😀", "é" + strings.Repeat("ü", 100),
	"@at$dollar'(paren)*", "[brackets]{braces}|pipe^caret`tick",
}

// TestKeyEscapingRoundTrip sends every nasty key through every single-key
// operation; the server decodes the one escaped path segment and must get
// the key back byte for byte.
func TestKeyEscapingRoundTrip(t *testing.T) {
	var mu sync.Mutex
	var got []string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.RequestURI != r.URL.EscapedPath() {
			t.Errorf("RequestURI %q != EscapedPath %q", r.RequestURI, r.URL.EscapedPath())
		}
		if !strings.HasPrefix(r.URL.EscapedPath(), "/client/v4/accounts/"+testAccount+"/storage/kv/namespaces/"+testNS+"/") {
			t.Errorf("path %q", r.URL.EscapedPath())
		}
		k, ok := keyFromPath(t, r)
		if !ok {
			t.Errorf("no key in %q", r.URL.EscapedPath())
		}
		mu.Lock()
		got = append(got, k)
		mu.Unlock()
		io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/values/") {
			io.WriteString(w, "v")
			return
		}
		writeOK(w, "null")
	})
	ctx := context.Background()
	for _, key := range nastyKeys {
		if err := ValidateKey(key); err != nil {
			t.Fatalf("fixture key %q invalid: %v", key, err)
		}
		got = nil
		if err := c.PutValue(ctx, testNS, key, Bytes([]byte("v")), PutOptions{}); err != nil {
			t.Fatalf("put %q: %v", key, err)
		}
		if _, err := c.GetValue(ctx, testNS, key); err != nil {
			t.Fatalf("get %q: %v", key, err)
		}
		if _, err := c.GetMetadata(ctx, testNS, key); err != nil {
			t.Fatalf("get metadata %q: %v", key, err)
		}
		if err := c.DeleteValue(ctx, testNS, key); err != nil {
			t.Fatalf("delete %q: %v", key, err)
		}
		want := []string{key, key, key, key}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("server decoded %q, want %q", got, want)
		}
	}
}

func TestEscapeSegmentIsStrict(t *testing.T) {
	for _, key := range nastyKeys {
		esc := escapeSegment(key)
		for _, ch := range []byte(esc) {
			if !(ch == '%' || ch == '-' || ch == '_' || ch == '.' || ch == '~' ||
				'0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z') {
				t.Errorf("escapeSegment(%q) = %q keeps %q", key, esc, ch)
			}
		}
	}
}

type seenPut struct {
	query         string
	contentType   string
	contentLength int64
	bodyLen       int64
	auth          [3]string
	userAgent     string
	parts         []seenPart
}

type seenPart struct {
	name, filename, contentType string
	header                      map[string][]string
	sum                         [32]byte
	data                        []byte // only for small parts
}

// parsePut reads a multipart PUT as a form-data parser would.
func parsePut(t *testing.T, r *http.Request) seenPut {
	t.Helper()
	s := seenPut{
		query:         r.URL.RawQuery,
		contentType:   r.Header.Get("Content-Type"),
		contentLength: r.ContentLength,
		auth:          [3]string{r.Header.Get("Authorization"), r.Header.Get("X-Auth-Email"), r.Header.Get("X-Auth-Key")},
		userAgent:     r.Header.Get("User-Agent"),
	}
	cr := &countingReader{r: r.Body}
	mt, params, err := mime.ParseMediaType(s.contentType)
	if err != nil || mt != "multipart/form-data" {
		t.Errorf("content type %q: %v", s.contentType, err)
		return s
	}
	mr := multipart.NewReader(cr, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Errorf("multipart: %v", err)
			return s
		}
		h := sha256.New()
		var small bytes.Buffer
		if _, err := io.Copy(io.MultiWriter(h, &limitedBuffer{&small, 4096}), p); err != nil {
			t.Errorf("part %s: %v", p.FormName(), err)
		}
		sp := seenPart{name: p.FormName(), filename: p.FileName(), contentType: p.Header.Get("Content-Type"), header: p.Header, data: small.Bytes()}
		copy(sp.sum[:], h.Sum(nil))
		s.parts = append(s.parts, sp)
	}
	io.Copy(io.Discard, cr)
	s.bodyLen = cr.n
	return s
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func TestPutValueWire(t *testing.T) {
	exp := testNow.Unix() + 3600
	cases := []struct {
		name      string
		value     Value
		opts      PutOptions
		legacy    bool
		wantQuery string
		wantMeta  string
	}{
		{name: "plain", value: Bytes([]byte("hello")), wantQuery: ""},
		{name: "empty value", value: Bytes(nil)},
		{name: "binary", value: Bytes([]byte{0, 0xff, 0xfe, '\r', '\n', '-', '-'})},
		{name: "metadata compacted", value: Bytes([]byte("x")), opts: PutOptions{Metadata: json.RawMessage("{ \"a\" : 1,\n \"b\": [ \"c\" ] }")}, wantMeta: `{"a":1,"b":["c"]}`},
		{name: "ttl", value: Bytes([]byte("x")), opts: PutOptions{ExpirationTTL: 300}, wantQuery: "expiration_ttl=300"},
		{name: "expiration", value: Bytes([]byte("x")), opts: PutOptions{Expiration: exp}, wantQuery: "expiration=" + strconv.FormatInt(exp, 10)},
		{name: "ttl wins", value: Bytes([]byte("x")), opts: PutOptions{Expiration: exp, ExpirationTTL: 90}, wantQuery: "expiration_ttl=90"},
		{name: "legacy auth", value: Bytes([]byte("x")), legacy: true},
		{name: "generated 3 MiB", value: genValue{size: 3 << 20, seed: 7}, opts: PutOptions{Metadata: json.RawMessage(`{"m":true}`)}, wantMeta: `{"m":true}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var seen seenPut
			mods := []func(*Options){func(o *Options) { o.UserAgent = "kvsync/1.2.3" }}
			if tc.legacy {
				mods = append(mods, func(o *Options) { o.Token, o.Email, o.APIKey = "", "me@example.com", "legacykey" })
			}
			c, n := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPut || !strings.HasSuffix(r.URL.Path, "/values/the key") {
					t.Errorf("%s %s", r.Method, r.URL.Path)
				}
				seen = parsePut(t, r)
				writeOK(w, "null")
			}, mods...)
			if err := c.PutValue(context.Background(), testNS, "the key", tc.value, tc.opts); err != nil {
				t.Fatal(err)
			}
			if n.Load() != 1 {
				t.Fatalf("%d requests", n.Load())
			}
			if seen.query != tc.wantQuery {
				t.Errorf("query %q, want %q", seen.query, tc.wantQuery)
			}
			if seen.contentLength != seen.bodyLen || seen.contentLength <= tc.value.Size() {
				t.Errorf("Content-Length %d, body %d bytes, value %d", seen.contentLength, seen.bodyLen, tc.value.Size())
			}
			wantAuth := [3]string{"Bearer " + testToken, "", ""}
			if tc.legacy {
				wantAuth = [3]string{"", "me@example.com", "legacykey"}
			}
			if seen.auth != wantAuth {
				t.Errorf("auth headers %q, want %q", seen.auth, wantAuth)
			}
			if seen.userAgent != "kvsync/1.2.3" {
				t.Errorf("User-Agent %q", seen.userAgent)
			}
			var value *seenPart
			var meta *seenPart
			for i := range seen.parts {
				switch p := &seen.parts[i]; p.name {
				case "value":
					value = p
				case "metadata":
					meta = p
				default:
					t.Errorf("unexpected part %q", p.name)
				}
			}
			if value == nil {
				t.Fatal("no value part")
			}
			if value.filename != "" || value.contentType != "" || len(value.header) != 1 {
				t.Errorf("value part is not a plain form field: %v", value.header)
			}
			if value.sum != sumValue(t, tc.value) {
				t.Error("value bytes differ")
			}
			switch {
			case tc.wantMeta == "" && meta != nil:
				t.Errorf("metadata part sent: %s", meta.data)
			case tc.wantMeta != "" && meta == nil:
				t.Error("no metadata part")
			case meta != nil:
				if string(meta.data) != tc.wantMeta || meta.contentType != "application/json" {
					t.Errorf("metadata %q (%s), want %q (application/json)", meta.data, meta.contentType, tc.wantMeta)
				}
			}
		})
	}
}

// TestPutValueRefusesChangedSource: a value whose reader yields fewer or
// more bytes than its size, or fails, aborts the request; the server never
// receives a complete form.
func TestPutValueRefusesChangedSource(t *testing.T) {
	cases := []struct {
		name  string
		value Value
		want  error
	}{
		{"shorter", genValue{size: 1 << 20, skew: -1}, ErrValueSizeMismatch},
		{"much shorter", genValue{size: 1 << 20, skew: -(1 << 19)}, ErrValueSizeMismatch},
		{"longer", genValue{size: 1 << 20, skew: 1}, ErrValueSizeMismatch},
		{"empty but announced", genValue{size: 10, skew: -10}, ErrValueSizeMismatch},
		{"read error", failingValue{size: 100, readErr: errBoom}, errBoom},
		{"open error", failingValue{size: 100, openErr: errBoom}, errBoom},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var complete, seen int
			var mu sync.Mutex
			c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
				mr := multipart.NewReader(r.Body, params["boundary"])
				ok := true
				for {
					p, err := mr.NextPart()
					if err == io.EOF {
						break
					}
					if err != nil {
						ok = false
						break
					}
					if _, err := io.Copy(io.Discard, p); err != nil {
						ok = false
						break
					}
				}
				mu.Lock()
				seen++
				if ok {
					complete++
				}
				mu.Unlock()
				writeOK(w, "null")
			})
			err := c.PutValue(context.Background(), testNS, "k", tc.value, PutOptions{})
			var ve *ValueError
			if !errors.As(err, &ve) || !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want a ValueError %v", err, tc.want)
			}
			if ve.Key != "k" || ve.Op != OpPut {
				t.Errorf("error names %s %q", ve.Op, ve.Key)
			}
			if IsRetryable(err) {
				t.Error("a changed source is retryable")
			}
			c.hc.CloseIdleConnections()
			mu.Lock()
			defer mu.Unlock()
			if complete != 0 {
				t.Errorf("server received %d complete forms (of %d requests)", complete, seen)
			}
		})
	}
}

// rewindingTransport consumes part of the first body of every request,
// throws it away, and sends the request again with a body from GetBody, as a
// redirect or a transport-level retry would.
type rewindingTransport struct {
	next     http.RoundTripper
	mu       sync.Mutex
	rewinds  int
	firstLen int
}

func (rt *rewindingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return rt.next.RoundTrip(req)
	}
	if req.GetBody == nil {
		return nil, errors.New("request has a body but no GetBody")
	}
	buf := make([]byte, rt.firstLen)
	io.ReadFull(req.Body, buf)
	req.Body.Close()
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	again := req.Clone(req.Context())
	again.Body = body
	rt.mu.Lock()
	rt.rewinds++
	rt.mu.Unlock()
	return rt.next.RoundTrip(again)
}

func TestGetBodyResendsTheWholeBody(t *testing.T) {
	value := genValue{size: 1<<20 + 3, seed: 3}
	want := sumValue(t, value)
	pairs := []BulkPair{
		{Key: "text", Value: []byte(strings.Repeat("quote\" back\\ nl\n ctl\x01 é ", 5000))},
		{Key: "bin", Value: bytes.Repeat([]byte{0xff, 0x00, 0xfe}, 40000), Metadata: json.RawMessage(`{"b":1}`)},
	}
	var bulkBodies [][]byte
	var sums [][32]byte
	var mu sync.Mutex
	handler := func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/bulk"):
			b, err := io.ReadAll(r.Body)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			bulkBodies = append(bulkBodies, b)
			mu.Unlock()
			writeOK(w, `{"successful_key_count":2,"unsuccessful_keys":[]}`)
		default:
			s := parsePut(t, r)
			for _, p := range s.parts {
				if p.name == "value" {
					mu.Lock()
					sums = append(sums, p.sum)
					mu.Unlock()
				}
			}
			writeOK(w, "null")
		}
	}
	ctx := context.Background()

	// Twice through a plain client: the same Value uploads in full each time.
	plain, _ := newTestClient(t, handler)
	for range 2 {
		if err := plain.PutValue(ctx, testNS, "k", value, PutOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := plain.BulkPut(ctx, testNS, pairs); err != nil {
			t.Fatal(err)
		}
	}
	// Through a transport that abandons the first body half-read.
	rt := &rewindingTransport{firstLen: 4096}
	rewound, _ := newTestClient(t, handler, func(o *Options) {
		rt.next = o.HTTPClient.Transport
		o.HTTPClient = &http.Client{Transport: rt}
	})
	if err := rewound.PutValue(ctx, testNS, "k", value, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rewound.BulkPut(ctx, testNS, pairs); err != nil {
		t.Fatal(err)
	}
	if rt.rewinds != 2 {
		t.Errorf("%d rewinds, want 2", rt.rewinds)
	}
	// Through a 307 redirect, which net/http follows by calling GetBody.
	var redirected sync.Once
	redirecting, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		first := false
		redirected.Do(func() { first = true })
		if first {
			io.CopyN(io.Discard, r.Body, 1000)
			http.Redirect(w, r, r.URL.String(), http.StatusTemporaryRedirect)
			return
		}
		handler(w, r)
	})
	if err := redirecting.PutValue(ctx, testNS, "k", value, PutOptions{}); err != nil {
		t.Fatal(err)
	}

	if len(sums) != 4 {
		t.Fatalf("%d value uploads reached the handler, want 4", len(sums))
	}
	for i, s := range sums {
		if s != want {
			t.Errorf("upload %d: value differs", i)
		}
	}
	if len(bulkBodies) != 3 {
		t.Fatalf("%d bulk bodies, want 3", len(bulkBodies))
	}
	for i, b := range bulkBodies[1:] {
		if !bytes.Equal(b, bulkBodies[0]) {
			t.Errorf("bulk body %d differs from the first", i+1)
		}
	}
}

func TestBulkPutWire(t *testing.T) {
	exp := testNow.Unix() + 600
	text := "plain \"quoted\" \\ back\nslash\t\r\x00\x1f\x7f é 日本 😀 \u2028 </script>"
	binary := []byte{0xff, 0xfe, 0x00, 0x80, 'a'}
	pairs := []BulkPair{
		{Key: "text", Value: []byte(text)},
		{Key: "bin/ary", Value: binary, Metadata: json.RawMessage(" { \"k\" : \"v\" } "), ExpirationTTL: 120},
		{Key: "exp \"q\"", Value: nil, Expiration: exp},
		{Key: "both", Value: []byte("x"), Expiration: exp, ExpirationTTL: 3600},
		{Key: "big", Value: bytes.Repeat([]byte("0123456789\n"), 20000)},
		{Key: "bigbin", Value: bytes.Repeat([]byte{0xff, 1, 2, 3, 4, 5, 6}, 20001)},
	}
	type wirePair struct {
		Key           string          `json:"key"`
		Value         string          `json:"value"`
		Base64        *bool           `json:"base64"`
		Expiration    *int64          `json:"expiration"`
		ExpirationTTL *int64          `json:"expiration_ttl"`
		Metadata      json.RawMessage `json:"metadata"`
	}
	var got []wirePair
	var rawBody []byte
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || !strings.HasSuffix(r.URL.Path, "/storage/kv/namespaces/"+testNS+"/bulk") {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		if r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("content type %q", r.Header.Get("Content-Type"))
		}
		var err error
		rawBody, err = io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
		}
		if int64(len(rawBody)) != r.ContentLength {
			t.Errorf("Content-Length %d, body %d", r.ContentLength, len(rawBody))
		}
		dec := json.NewDecoder(bytes.NewReader(rawBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Errorf("body is not the JSON array: %v", err)
		}
		writeOK(w, `{"successful_key_count":5,"unsuccessful_keys":["both"]}`)
	})
	res, err := c.BulkPut(context.Background(), testNS, pairs)
	if err != nil {
		t.Fatal(err)
	}
	if res.SuccessfulKeyCount != 5 || !reflect.DeepEqual(res.Unsuccessful, []string{"both"}) {
		t.Errorf("result %+v", res)
	}
	if !json.Valid(rawBody) {
		t.Fatal("body is not valid JSON")
	}
	if len(got) != len(pairs) {
		t.Fatalf("%d pairs on the wire, want %d", len(got), len(pairs))
	}
	for i, p := range pairs {
		w := got[i]
		if w.Key != p.Key {
			t.Errorf("pair %d key %q, want %q", i, w.Key, p.Key)
		}
		var value []byte
		if w.Base64 != nil && *w.Base64 {
			value, err = base64.StdEncoding.DecodeString(w.Value)
			if err != nil {
				t.Errorf("pair %d: %v", i, err)
			}
		} else {
			value = []byte(w.Value)
		}
		if !bytes.Equal(value, p.Value) {
			t.Errorf("pair %d value differs", i)
		}
		isBinary := p.Key == "bin/ary" || p.Key == "bigbin"
		if isBinary != (w.Base64 != nil) {
			t.Errorf("pair %d base64 flag %v", i, w.Base64)
		}
		switch {
		case p.ExpirationTTL > 0:
			if w.ExpirationTTL == nil || *w.ExpirationTTL != p.ExpirationTTL || w.Expiration != nil {
				t.Errorf("pair %d expiration_ttl %v expiration %v", i, w.ExpirationTTL, w.Expiration)
			}
		case p.Expiration > 0:
			if w.Expiration == nil || *w.Expiration != p.Expiration || w.ExpirationTTL != nil {
				t.Errorf("pair %d expiration %v", i, w.Expiration)
			}
		default:
			if w.Expiration != nil || w.ExpirationTTL != nil {
				t.Errorf("pair %d has an expiration", i)
			}
		}
		if p.Metadata != nil {
			if string(w.Metadata) != `{"k":"v"}` {
				t.Errorf("pair %d metadata %s, want the object compacted", i, w.Metadata)
			}
		} else if w.Metadata != nil {
			t.Errorf("pair %d metadata %s", i, w.Metadata)
		}
	}
}

func TestBulkResults(t *testing.T) {
	cases := []struct {
		result string
		want   BulkResult
	}{
		{`null`, BulkResult{SuccessfulKeyCount: 3}},
		{`{}`, BulkResult{SuccessfulKeyCount: 3}},
		{`{"successful_key_count":3,"unsuccessful_keys":[]}`, BulkResult{SuccessfulKeyCount: 3, Unsuccessful: []string{}}},
		{`{"successful_key_count":1,"unsuccessful_keys":["b","c"]}`, BulkResult{SuccessfulKeyCount: 1, Unsuccessful: []string{"b", "c"}}},
		{`{"unsuccessful_keys":["c"]}`, BulkResult{SuccessfulKeyCount: 2, Unsuccessful: []string{"c"}}},
	}
	for _, tc := range cases {
		t.Run(tc.result, func(t *testing.T) {
			var paths []string
			c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				paths = append(paths, r.Method+" "+strings.TrimPrefix(r.URL.Path, "/client/v4/accounts/"+testAccount+"/storage/kv/namespaces/"+testNS))
				if r.URL.Path[len(r.URL.Path)-6:] == "delete" {
					var keys []string
					if err := json.NewDecoder(r.Body).Decode(&keys); err != nil || !reflect.DeepEqual(keys, []string{"a", "b/\"x\"", "ключ"}) {
						t.Errorf("bulk delete body %q: %v", keys, err)
					}
				}
				io.Copy(io.Discard, r.Body)
				writeOK(w, tc.result)
			})
			ctx := context.Background()
			put, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "a"}, {Key: "b"}, {Key: "c"}})
			if err != nil || !reflect.DeepEqual(put, tc.want) {
				t.Errorf("BulkPut = %+v, %v; want %+v", put, err, tc.want)
			}
			del, err := c.BulkDelete(ctx, testNS, []string{"a", "b/\"x\"", "ключ"})
			if err != nil || !reflect.DeepEqual(del, tc.want) {
				t.Errorf("BulkDelete = %+v, %v; want %+v", del, err, tc.want)
			}
			if want := []string{"PUT /bulk", "POST /bulk/delete"}; !reflect.DeepEqual(paths, want) {
				t.Errorf("requests %q, want %q", paths, want)
			}
		})
	}
	t.Run("empty batches send nothing", func(t *testing.T) {
		c, n := newTestClient(t, okHandler)
		if res, err := c.BulkPut(context.Background(), testNS, nil); err != nil || res.SuccessfulKeyCount != 0 {
			t.Errorf("BulkPut(nil) = %+v, %v", res, err)
		}
		if res, err := c.BulkDelete(context.Background(), testNS, nil); err != nil || res.SuccessfulKeyCount != 0 {
			t.Errorf("BulkDelete(nil) = %+v, %v", res, err)
		}
		if n.Load() != 0 {
			t.Errorf("%d requests", n.Load())
		}
	})
}

func TestListKeysAndListAll(t *testing.T) {
	type call struct{ prefix, cursor, limit string }
	var calls []call
	pages := map[string]string{
		"":   `{"success":true,"errors":[],"result":[{"name":"p/a","expiration":1900000000,"metadata":{"x":1}},{"name":"p/b"}],"result_info":{"count":2,"cursor":"c1"}}`,
		"c1": `{"success":true,"errors":[],"result":[],"result_info":{"count":0,"cursor":"c2"}}`,
		"c2": `{"success":true,"errors":[],"result":null,"result_info":{"count":0,"cursor":"c3"}}`,
		"c3": `{"success":true,"errors":[],"result":[{"name":"p/c"}],"result_info":{"count":1,"cursor":""}}`,
	}
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/"+testNS+"/keys") {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		q := r.URL.Query()
		calls = append(calls, call{q.Get("prefix"), q.Get("cursor"), q.Get("limit")})
		page, ok := pages[q.Get("cursor")]
		if !ok {
			w.WriteHeader(400)
			io.WriteString(w, `{"success":false,"errors":[{"code":10041,"message":"invalid cursor"}]}`)
			return
		}
		io.WriteString(w, page)
	})
	ctx := context.Background()
	page, err := c.ListKeys(ctx, testNS, ListOptions{Prefix: "p/", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	want := KeyPage{Cursor: "c1", Keys: []KeyInfo{
		{Name: "p/a", Expiration: 1900000000, Metadata: json.RawMessage(`{"x":1}`)},
		{Name: "p/b"},
	}}
	if !reflect.DeepEqual(page, want) {
		t.Errorf("page %+v, want %+v", page, want)
	}
	if calls[0] != (call{"p/", "", "10"}) {
		t.Errorf("first call %+v", calls[0])
	}

	calls = nil
	var names []string
	if err := ListAll(ctx, c, testNS, "p/", func(k KeyInfo) error { names = append(names, k.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(names, []string{"p/a", "p/b", "p/c"}) {
		t.Errorf("ListAll names %q", names)
	}
	wantCalls := []call{{"p/", "", ""}, {"p/", "c1", ""}, {"p/", "c2", ""}, {"p/", "c3", ""}}
	if !reflect.DeepEqual(calls, wantCalls) {
		t.Errorf("ListAll calls %+v, want %+v (prefix repeated, cursors followed past empty pages)", calls, wantCalls)
	}
	_, err = c.ListKeys(ctx, testNS, ListOptions{Cursor: "bogus"})
	if !reflect.DeepEqual(codesOf(err), []int{10041}) {
		t.Errorf("bad cursor: %v", err)
	}
}

func codesOf(err error) []int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Codes()
	}
	return nil
}

func TestGetValueAndMetadata(t *testing.T) {
	value := []byte("{\"not\":\"an envelope\"}\x00\xff")
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		key, _ := keyFromPath(t, r)
		isValue := strings.Contains(r.URL.Path, "/values/")
		if isValue && r.Header.Get("Accept") != "application/octet-stream" {
			t.Errorf("Accept %q", r.Header.Get("Accept"))
		}
		switch {
		case key == "missing":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"success":false,"errors":[{"code":10009,"message":"get: 'key not found'"}],"messages":[],"result":null}`)
		case isValue && key == "expiring":
			w.Header().Set("Expiration", "1900000000")
			w.Write(value)
		case isValue && key == "bad-expiration":
			w.Header().Set("Expiration", "soon")
			w.Write(value)
		case isValue:
			w.Write(value)
		case key == "no-meta":
			writeOK(w, "null")
		default:
			writeOK(w, `{"a":[1,2]}`)
		}
	})
	ctx := context.Background()
	got, err := c.GetValue(ctx, testNS, "plain")
	if err != nil || !bytes.Equal(got.Value, value) || got.Expiration != 0 {
		t.Errorf("GetValue plain = %q, %d, %v", got.Value, got.Expiration, err)
	}
	got, err = c.GetValue(ctx, testNS, "expiring")
	if err != nil || !bytes.Equal(got.Value, value) || got.Expiration != 1900000000 {
		t.Errorf("GetValue expiring = %q, %d, %v", got.Value, got.Expiration, err)
	}
	_, err = c.GetValue(ctx, testNS, "bad-expiration")
	var ae *APIError
	if !errors.As(err, &ae) || !strings.Contains(ae.Detail, "expiration") {
		t.Errorf("bad expiration header: %v", err)
	}
	_, err = c.GetValue(ctx, testNS, "missing")
	if StatusCode(err) != 404 || !reflect.DeepEqual(codesOf(err), []int{10009}) || IsRetryable(err) {
		t.Errorf("GetValue missing = %v", err)
	}
	meta, err := c.GetMetadata(ctx, testNS, "with-meta")
	if err != nil || string(meta) != `{"a":[1,2]}` {
		t.Errorf("GetMetadata = %s, %v", meta, err)
	}
	meta, err = c.GetMetadata(ctx, testNS, "no-meta")
	if err != nil || string(meta) != `null` {
		t.Errorf("GetMetadata no-meta = %s, %v", meta, err)
	}
	_, err = c.GetMetadata(ctx, testNS, "missing")
	if StatusCode(err) != 404 {
		t.Errorf("GetMetadata missing = %v", err)
	}
}

func TestBaseURLVariants(t *testing.T) {
	for _, suffix := range []string{"", "/", "/client/v4", "/client/v4/"} {
		t.Run(suffix, func(t *testing.T) {
			var path string
			c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				path = r.URL.EscapedPath()
				writeOK(w, "null")
			}, func(o *Options) { o.BaseURL = strings.TrimSuffix(o.BaseURL, "/client/v4") + suffix })
			if err := c.DeleteValue(context.Background(), testNS, "a/b"); err != nil {
				t.Fatal(err)
			}
			want := strings.TrimSuffix(suffix, "/") + "/accounts/" + testAccount + "/storage/kv/namespaces/" + testNS + "/values/a%2Fb"
			if path != want {
				t.Errorf("path %q, want %q", path, want)
			}
		})
	}
}

func TestDeleteSendsNoBody(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodDelete || len(b) != 0 || r.ContentLength > 0 || len(r.TransferEncoding) > 0 {
			t.Errorf("%s with %d body bytes, Content-Length %d, TE %v", r.Method, len(b), r.ContentLength, r.TransferEncoding)
		}
		writeOK(w, "{}")
	})
	if err := c.DeleteValue(context.Background(), testNS, "k"); err != nil {
		t.Fatal(err)
	}
}

func ExampleNew() {
	c, err := New(Options{AccountID: "023e105f4ecef8ad9ca31a8372d0c353", Token: "secret", UserAgent: "kvsync/1.0.0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c)
	// Output: kvapi.Client{https://api.cloudflare.com/client/v4 account 023e105f4ecef8ad9ca31a8372d0c353, auth token}
}

// TestRedirectsStayOnOrigin: a redirect to another origin is not followed,
// so neither the token nor the legacy key headers reach it.
func TestRedirectsStayOnOrigin(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			foreign, foreignHits := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				t.Errorf("foreign origin reached with Authorization %q X-Auth-Key %q", r.Header.Get("Authorization"), r.Header.Get("X-Auth-Key"))
				writeOK(w, "null")
			})
			target := foreign.base.Scheme + "://" + foreign.base.Host + "/elsewhere"
			c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				http.Redirect(w, r, target, http.StatusTemporaryRedirect)
			}, func(o *Options) {
				if legacy {
					o.Token, o.Email, o.APIKey = "", "me@example.com", "legacykey"
				}
			})
			err := c.PutValue(context.Background(), testNS, "k", Bytes([]byte("v")), PutOptions{})
			if StatusCode(err) != http.StatusTemporaryRedirect || IsRetryable(err) {
				t.Errorf("got %v, want the 307 as a permanent APIError", err)
			}
			if foreignHits.Load() != 0 {
				t.Errorf("%d requests reached the foreign origin", foreignHits.Load())
			}
		})
	}
}

// errorBodyReader is an endless reply body that counts what was read.
type errorBodyReader struct{ n int64 }

func (e *errorBodyReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.n += int64(len(p))
	return len(p), nil
}

func (e *errorBodyReader) Close() error { return nil }

// TestErrorBodyIsBounded: an endless error reply is read only up to the
// limit (plus the small drain for connection reuse).
func TestErrorBodyIsBounded(t *testing.T) {
	c, err := New(Options{AccountID: testAccount, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	body := &errorBodyReader{}
	resp := &http.Response{StatusCode: 500, Header: http.Header{}, Body: body}
	_, err = c.envelope(context.Background(), OpPut, "k", resp)
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 500 || !strings.Contains(ae.Detail, "not a JSON envelope") {
		t.Fatalf("got %v", err)
	}
	if len(ae.Detail) > 1000 {
		t.Errorf("Detail quotes %d bytes of the body", len(ae.Detail))
	}
	if limit := int64(maxErrorBody + 64<<10); body.n > limit+32<<10 {
		t.Errorf("read %d bytes of an error body, limit %d", body.n, limit)
	}
}
