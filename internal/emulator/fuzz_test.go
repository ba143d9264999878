package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzNow is the fuzzed emulator's clock. It stands still, so the
// expiration a PUT asked for is known to the second.
var fuzzNow = time.Unix(1_700_000_000, 0)

const fuzzToken = "fuzz-token"

// FuzzEmulatorRequest sends arbitrary requests straight into ServeHTTP. The
// emulator stands in for Cloudflare in every kvsync test, so whatever a buggy
// client (or a fuzzer) sends must get an answer a client can classify: never
// a panic, a status in 200..599, and either Cloudflare's JSON envelope (which
// says success exactly when the status is 2xx and names an error otherwise)
// or, for a value read only, the raw value. Beyond the answer, the data: a
// refused request leaves the namespace it names (and the seeds' one) as it
// was, and a key a PUT wrote reads back exactly as written through the
// value, metadata and list endpoints.
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
		{1, base + "/values/k", "expiration=1700000100&expiration_ttl=120.0", []byte("v"), 0, 0},
		{1, base + "/values/a%2Fb", "expiration=1", []byte("v"), 0, 0},
		{1, base + "/values/a%2Fb/%C3%A9", "expiration=1700000060", []byte("v"), 1, 3},
		{1, base + "/values/k", "", []byte("--x\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nv\r\n--x\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{\"a\":1}\r\n--x--\r\n"), 2, 0},
		{1, base + "/values/k", "expiration_ttl=3600", []byte("--x\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n { \"a\" : [\"<&>\", null] }\r\n--x\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\n\x00\xff\r\n--x--\r\n"), 2, 0},
		{1, base + "/values/k", "", []byte("--x\r\n--x--"), 2, 0},
		{1, base + "/values/k", "", []byte("--x\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nv\r\n--x\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n\f{}\r\n--x--\r\n"), 2, 0},
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
	methods := []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch, http.MethodHead, "BREW"}
	ctypes := []string{"", "application/json", "multipart/form-data; boundary=x", "multipart/form-data"}

	f.Fuzz(func(t *testing.T, method uint8, path, query string, body []byte, ctype, auth uint8) {
		u, err := url.Parse("http://127.0.0.1" + path)
		if err != nil || u.Host != "127.0.0.1" {
			t.Skip("not a request target a client could send")
		}
		u.RawQuery = query
		// A fresh emulator per input, so that a failing input replays on
		// its own exactly as it ran.
		em, err := New(Options{Token: fuzzToken, Now: func() time.Time { return fuzzNow }})
		if err != nil {
			t.Fatal(err)
		}
		defer em.Close()

		// Keys already there, for a refused request to leave alone: one in
		// the seeds' namespace and one in the namespace the path names (the
		// very key, for a values path).
		refs := []nsRef{{"acct", "ns"}}
		plant(t, em, refs[0], "planted")
		target, isValues := valuesTarget(u)
		if ref, ok := namespaceOf(u); ok && ref != refs[0] {
			refs = append(refs, ref)
			plant(t, em, ref, "planted")
		}
		if isValues {
			plant(t, em, target.ref, target.key)
		}
		before := snapshots(em, refs)

		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/", bytes.NewReader(body))
		req.Method = methods[int(method)%len(methods)]
		req.URL = u
		req.RequestURI = u.RequestURI()
		req.ContentLength = int64(len(body))
		ct := ctypes[int(ctype)%len(ctypes)]
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		switch auth % 4 {
		case 0:
			req.Header.Set("Authorization", "Bearer "+fuzzToken)
		case 1:
			req.Header.Set("Authorization", "Bearer wrong")
		case 2: // no credentials at all
		case 3:
			req.Header.Set("X-Auth-Email", "a@example.com")
			req.Header.Set("X-Auth-Key", fuzzToken)
		}
		what := fmt.Sprintf("%s %s?%s", req.Method, path, query)

		res, got := serve(em, req)
		checkAnswer(t, what, req, res, got)
		if res.StatusCode >= 300 {
			if after := snapshots(em, refs); !reflect.DeepEqual(after, before) {
				t.Fatalf("%s: refused with %d (%s), yet the data changed:\nbefore %s\nafter  %s", what, res.StatusCode, got, describe(before), describe(after))
			}
			return
		}
		if req.Method != http.MethodPut || !isValues {
			return
		}
		want, err := readPut(body, ct, u.Query())
		if err != nil {
			t.Fatalf("%s: accepted a write the test cannot read: %v", what, err)
		}
		checkReadBack(t, em, target, want)
	})
}

// checkAnswer checks that an answer is one a client can classify.
func checkAnswer(t *testing.T, what string, req *http.Request, res *http.Response, got []byte) {
	t.Helper()
	if res.StatusCode < 200 || res.StatusCode > 599 {
		t.Fatalf("%s: status %d", what, res.StatusCode)
	}
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		var env struct {
			Success *bool             `json:"success"`
			Errors  []json.RawMessage `json:"errors"`
			Result  json.RawMessage   `json:"result"`
		}
		if err := json.Unmarshal(got, &env); err != nil {
			t.Fatalf("%s: status %d with a JSON content type but body %q: %v", what, res.StatusCode, got, err)
		}
		if env.Success == nil || env.Errors == nil {
			t.Fatalf("%s: envelope lacks success or errors: %s", what, got)
		}
		ok := res.StatusCode < 300
		if *env.Success != ok {
			t.Fatalf("%s: status %d but success:%v: %s", what, res.StatusCode, *env.Success, got)
		}
		if !ok && len(env.Errors) == 0 {
			t.Fatalf("%s: failure %d names no error: %s", what, res.StatusCode, got)
		}
		return
	}
	// Only a successful value read answers with something other than an
	// envelope: the raw bytes.
	if res.StatusCode != http.StatusOK || req.Method != http.MethodGet || !strings.Contains(req.URL.EscapedPath(), "/values/") {
		t.Fatalf("%s: status %d, content type %q, body %q: neither an envelope nor a value read",
			what, res.StatusCode, res.Header.Get("Content-Type"), got)
	}
}

func serve(em *Emulator, req *http.Request) (*http.Response, []byte) {
	rec := httptest.NewRecorder()
	em.ServeHTTP(rec, req)
	res := rec.Result()
	got, _ := io.ReadAll(res.Body)
	return res, got
}

// fuzzTarget is the key a values path names, with the escaped segments
// the other endpoints' paths are built from.
type fuzzTarget struct {
	ref                   nsRef
	key                   string
	account, ns, escapedK string
}

var valuesPath = regexp.MustCompile(`^` + regexp.QuoteMeta(PathPrefix) + `/accounts/([^/]+)/storage/kv/namespaces/([^/]+)/values/(.*)$`)

// valuesTarget reads the key a values path names, as the package doc says
// it is named: the escaped path's segments, each percent-decoded once.
func valuesTarget(u *url.URL) (fuzzTarget, bool) {
	m := valuesPath.FindStringSubmatch(u.EscapedPath())
	if m == nil {
		return fuzzTarget{}, false
	}
	account, err1 := url.PathUnescape(m[1])
	ns, err2 := url.PathUnescape(m[2])
	key, err3 := url.PathUnescape(m[3])
	if err1 != nil || err2 != nil || err3 != nil {
		return fuzzTarget{}, false
	}
	return fuzzTarget{ref: nsRef{account, ns}, key: key, account: m[1], ns: m[2], escapedK: m[3]}, true
}

var namespacePath = regexp.MustCompile(`^` + regexp.QuoteMeta(PathPrefix) + `/accounts/([^/]+)/storage/kv/namespaces/([^/]+)`)

// namespaceOf reads the namespace a path names, if any.
func namespaceOf(u *url.URL) (nsRef, bool) {
	m := namespacePath.FindStringSubmatch(u.EscapedPath())
	if m == nil {
		return nsRef{}, false
	}
	account, err1 := url.PathUnescape(m[1])
	ns, err2 := url.PathUnescape(m[2])
	if err1 != nil || err2 != nil {
		return nsRef{}, false
	}
	return nsRef{account, ns}, true
}

// plant stores a key with a value, metadata and expiration that no
// fuzzed write is likely to repeat. Keys Seed refuses are left out.
func plant(t *testing.T, em *Emulator, ref nsRef, key string) {
	t.Helper()
	ent := Entry{Value: []byte("planted"), Metadata: json.RawMessage(`{"planted":true}`), Expiration: fuzzNow.Unix() + 86400}
	if err := em.Seed(ref.account, ref.id, key, ent); err != nil && checkKey(key) == nil {
		t.Fatal(err)
	}
}

func snapshots(em *Emulator, refs []nsRef) []map[string]Entry {
	var s []map[string]Entry
	for _, ref := range refs {
		s = append(s, em.Snapshot(ref.account, ref.id))
	}
	return s
}

func describe(snaps []map[string]Entry) string {
	var b strings.Builder
	for i, snap := range snaps {
		fmt.Fprintf(&b, "\n  namespace %d:", i)
		for _, k := range slices.Sorted(maps.Keys(snap)) {
			e := snap[k]
			fmt.Fprintf(&b, " %q=%q (metadata %s, expiration %d)", k, e.Value, e.Metadata, e.Expiration)
		}
	}
	return b.String()
}

// written is what a PUT wrote, as the test reads the request.
type written struct {
	value []byte
	meta  []byte // compacted; nil for none
	exp   int64  // 0 for none
}

// readPut reads an accepted PUT: a multipart body's last "value" and
// "metadata" parts (metadata null is none), any other body whole as the
// value; expiration_ttl, which wins, or expiration from the query.
func readPut(body []byte, ctype string, q url.Values) (written, error) {
	var w written
	whole := func(name string) (int64, error) {
		f, err := strconv.ParseFloat(strings.TrimSpace(q.Get(name)), 64)
		if err != nil || f != float64(int64(f)) {
			return 0, fmt.Errorf("%s=%q is no whole number", name, q.Get(name))
		}
		return int64(f), nil
	}
	switch {
	case q.Has("expiration_ttl"):
		ttl, err := whole("expiration_ttl")
		if err != nil {
			return w, err
		}
		w.exp = fuzzNow.Unix() + ttl
	case q.Has("expiration"):
		exp, err := whole("expiration")
		if err != nil {
			return w, err
		}
		w.exp = exp
	}
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil || mt != "multipart/form-data" {
		w.value = body
		return w, nil
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	hasValue := false
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return w, err
		}
		data, err := io.ReadAll(part)
		if err != nil {
			return w, err
		}
		switch part.FormName() {
		case "value":
			w.value, hasValue = data, true
		case "metadata":
			var buf bytes.Buffer
			if err := json.Compact(&buf, data); err != nil {
				return w, fmt.Errorf("metadata %q: %v", data, err)
			}
			w.meta = buf.Bytes()
			if buf.String() == "null" {
				w.meta = nil
			}
		}
	}
	if !hasValue {
		return w, errors.New("no value part")
	}
	return w, nil
}

// checkReadBack reads target back through the value, metadata and list
// endpoints and compares each with what was written.
func checkReadBack(t *testing.T, em *Emulator, target fuzzTarget, want written) {
	t.Helper()
	nsPath := PathPrefix + "/accounts/" + target.account + "/storage/kv/namespaces/" + target.ns
	get := func(path, query string) (*http.Response, []byte) {
		t.Helper()
		u, err := url.Parse("http://127.0.0.1" + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		u.RawQuery = query
		req := httptest.NewRequest(http.MethodGet, u.String(), nil)
		req.Header.Set("Authorization", "Bearer "+fuzzToken)
		res, got := serve(em, req)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s?%s after writing %q: %d %s", path, query, target.key, res.StatusCode, got)
		}
		return res, got
	}
	// The bytes written, compacted (readPut), and nothing else: no escape
	// of <, >, & or U+2028/9 may creep in on the way out.
	wantMeta := want.meta

	res, got := get(nsPath+"/values/"+target.escapedK, "")
	wantExp := ""
	if want.exp != 0 {
		wantExp = strconv.FormatInt(want.exp, 10)
	}
	if !bytes.Equal(got, want.value) || res.Header.Get("Expiration") != wantExp {
		t.Fatalf("value of %q: %q expiring %q, want %q expiring %q", target.key, got, res.Header.Get("Expiration"), want.value, wantExp)
	}

	_, got = get(nsPath+"/metadata/"+target.escapedK, "")
	var env struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(got, &env); err != nil {
		t.Fatalf("metadata of %q: %s: %v", target.key, got, err)
	}
	wantResult := wantMeta
	if wantResult == nil {
		wantResult = []byte("null")
	}
	if !bytes.Equal(env.Result, wantResult) {
		t.Fatalf("metadata of %q: %s, want %s", target.key, env.Result, wantResult)
	}

	_, got = get(nsPath+"/keys", "limit=10&prefix="+url.QueryEscape(target.key))
	var list struct {
		Result []struct {
			Name       string          `json:"name"`
			Expiration int64           `json:"expiration"`
			Metadata   json.RawMessage `json:"metadata"`
		} `json:"result"`
	}
	if err := json.Unmarshal(got, &list); err != nil {
		t.Fatalf("list of %q: %s: %v", target.key, got, err)
	}
	// No other key with this prefix sorts before the key itself.
	if len(list.Result) == 0 || list.Result[0].Name != target.key {
		t.Fatalf("list with prefix %q: %s, want %q first", target.key, got, target.key)
	}
	if e := list.Result[0]; e.Expiration != want.exp || !bytes.Equal(e.Metadata, wantMeta) {
		t.Fatalf("list entry of %q: expiration %d metadata %s, want %d %s", target.key, e.Expiration, e.Metadata, want.exp, wantMeta)
	}
}
