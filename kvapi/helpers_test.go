package kvapi

import (
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testAccount = "023e105f4ecef8ad9ca31a8372d0c353"
	testNS      = "0f2ac74b498b48028cb68387c421e279"
	testToken   = "tok-SECRET-9f8e7d6c5b4a"
)

// testNow is the injected clock of every test client.
var testNow = time.Unix(1_800_000_000, 0)

// newTestClient starts an httptest server running h and a Client aimed at
// it. The returned counter counts the requests the server received.
func newTestClient(t testing.TB, h http.HandlerFunc, mods ...func(*Options)) (*Client, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	opts := Options{
		BaseURL:    srv.URL + "/client/v4",
		AccountID:  testAccount,
		Token:      testToken,
		HTTPClient: srv.Client(),
		Now:        func() time.Time { return testNow },
	}
	for _, m := range mods {
		m(&opts)
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, &n
}

// writeOK answers with a success envelope carrying result (raw JSON).
func writeOK(w http.ResponseWriter, result string) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":`+result+`}`)
}

// okHandler drains the request body and answers success.
func okHandler(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	writeOK(w, "null")
}

// genValue is a Value of size bytes generated on the fly, so that tests and
// benchmarks can upload 25 MiB without holding 25 MiB. Its reader yields
// size+skew bytes, to simulate a source that changed.
type genValue struct {
	size int64
	skew int64
	seed byte
}

func (g genValue) Size() int64 { return g.size }

func (g genValue) Open() (io.ReadCloser, error) {
	return &genReader{n: g.size + g.skew, seed: g.seed}, nil
}

type genReader struct {
	off, n int64
	seed   byte
}

func (r *genReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rem := r.n - r.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	for i := range p {
		x := r.off + int64(i)
		p[i] = byte(x*31+x>>8) ^ r.seed
	}
	r.off += int64(len(p))
	return len(p), nil
}

func (r *genReader) Close() error { return nil }

func sumValue(t testing.TB, v Value) [32]byte {
	t.Helper()
	rc, err := v.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// failingValue's Open or Read fails.
type failingValue struct {
	size    int64
	openErr error
	readErr error
}

func (f failingValue) Size() int64 { return f.size }

func (f failingValue) Open() (io.ReadCloser, error) {
	if f.openErr != nil {
		return nil, f.openErr
	}
	return io.NopCloser(io.MultiReader(strings.NewReader("partial"), errReader{f.readErr})), nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

var errBoom = errors.New("boom")

// keyFromPath returns the key of a .../values/{key} or .../metadata/{key}
// request as the server decodes it: the single escaped segment after the
// operation, percent-decoded.
func keyFromPath(t testing.TB, r *http.Request) (string, bool) {
	t.Helper()
	p := r.URL.EscapedPath()
	for _, marker := range []string{"/values/", "/metadata/"} {
		if i := strings.LastIndex(p, marker); i >= 0 {
			seg := p[i+len(marker):]
			if strings.Contains(seg, "/") {
				t.Errorf("key segment %q of %q holds an unescaped slash", seg, p)
			}
			k, err := url.PathUnescape(seg)
			if err != nil {
				t.Errorf("segment %q: %v", seg, err)
			}
			return k, true
		}
	}
	return "", false
}
