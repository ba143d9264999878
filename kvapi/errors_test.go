package kvapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hijack writes raw bytes on the connection and closes it.
func hijack(t *testing.T, w http.ResponseWriter, raw string) {
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	buf.WriteString(raw)
	buf.Flush()
	conn.Close()
}

func respond(status int, body string, headers ...string) func(*testing.T, http.ResponseWriter, *http.Request) {
	return func(_ *testing.T, w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func TestReplyClassification(t *testing.T) {
	const (
		kindAPI     = "api"
		kindNetwork = "network"
	)
	cases := []struct {
		name        string
		handler     func(*testing.T, http.ResponseWriter, *http.Request)
		kind        string
		status      int
		codes       []int
		retryable   bool
		rateLimited bool
		retryAfter  time.Duration
		detail      string
	}{
		{name: "success:false on 200",
			handler: respond(200, `{"success":false,"errors":[{"code":10012,"message":"malformed value"}],"messages":[],"result":null}`),
			kind:    kindAPI, status: 200, codes: []int{10012}},
		{name: "no success field on 200", handler: respond(200, `{"result":null}`),
			kind: kindAPI, status: 200, detail: "success:true"},
		{name: "400 with codes",
			handler: respond(400, `{"success":false,"errors":[{"code":10030,"message":"key too long"},{"code":10042,"message":"illegal key name"}]}`),
			kind:    kindAPI, status: 400, codes: []int{10030, 10042}},
		{name: "403 auth", handler: respond(403, `{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}`),
			kind: kindAPI, status: 403, codes: []int{10000}},
		{name: "404 namespace", handler: respond(404, `{"success":false,"errors":[{"code":10013,"message":"namespace not found"}]}`),
			kind: kindAPI, status: 404, codes: []int{10013}},
		{name: "409 conflict", handler: respond(409, `{"success":false,"errors":[{"code":10001,"message":"try again"}]}`),
			kind: kindAPI, status: 409, codes: []int{10001}, retryable: true},
		{name: "429 Retry-After seconds",
			handler: respond(429, `{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}]}`, "Retry-After", "7"),
			kind:    kindAPI, status: 429, codes: []int{971}, retryable: true, rateLimited: true, retryAfter: 7 * time.Second},
		{name: "429 Retry-After HTTP-date",
			handler: respond(429, `{"success":false,"errors":[{"code":10022,"message":"too many requests"}]}`, "Retry-After", testNow.Add(30*time.Second).UTC().Format(http.TimeFormat)),
			kind:    kindAPI, status: 429, codes: []int{10022}, retryable: true, rateLimited: true, retryAfter: 30 * time.Second},
		{name: "429 absurd Retry-After capped",
			handler: respond(429, `{"success":false,"errors":[]}`, "Retry-After", "86400000"),
			kind:    kindAPI, status: 429, retryable: true, rateLimited: true, retryAfter: time.Hour, detail: "no errors"},
		{name: "429 Retry-After date in the past",
			handler: respond(429, `{"success":false,"errors":[]}`, "Retry-After", testNow.Add(-time.Minute).UTC().Format(http.TimeFormat)),
			kind:    kindAPI, status: 429, retryable: true, rateLimited: true, retryAfter: 0, detail: "no errors"},
		{name: "429 without body or header", handler: respond(429, ``),
			kind: kindAPI, status: 429, retryable: true, rateLimited: true, detail: "empty reply"},
		{name: "500 envelope", handler: respond(500, `{"success":false,"errors":[{"code":10001,"message":"service temporarily unavailable"}]}`),
			kind: kindAPI, status: 500, codes: []int{10001}, retryable: true},
		{name: "502 HTML from a proxy", handler: respond(502, `<html><body>Bad gateway</body></html>`),
			kind: kindAPI, status: 502, retryable: true, detail: "Bad gateway"},
		{name: "503 empty", handler: respond(503, ``, "Retry-After", "2"),
			kind: kindAPI, status: 503, retryable: true, retryAfter: 2 * time.Second, detail: "empty reply"},
		{name: "200 not JSON", handler: respond(200, `OK`),
			kind: kindAPI, status: 200, detail: "not a JSON envelope"},
		{name: "200 truncated JSON, complete HTTP body", handler: respond(200, `{"success":tr`),
			kind: kindAPI, status: 200, detail: "not a JSON envelope"},
		{name: "200 body cut off mid-stream",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				hijack(t, w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"success\":tr")
			},
			kind: kindNetwork, retryable: true},
		{name: "400 body cut off mid-stream keeps the status",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				hijack(t, w, "HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\n{\"success\":fa")
			},
			kind: kindAPI, status: 400, detail: "reading reply"},
		{name: "connection dropped before a reply",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				hijack(t, w, "")
			},
			kind: kindNetwork, retryable: true},
		{name: "garbage instead of HTTP",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				hijack(t, w, "SSH-2.0-nope\r\n\r\n")
			},
			kind: kindNetwork, retryable: true},
	}
	ops := []struct {
		name string
		op   Op
		key  string
		call func(*Client) error
	}{
		{"delete", OpDelete, "k/1", func(c *Client) error { return c.DeleteValue(context.Background(), testNS, "k/1") }},
		{"put", OpPut, "k/2", func(c *Client) error {
			return c.PutValue(context.Background(), testNS, "k/2", Bytes([]byte("v")), PutOptions{})
		}},
		{"bulk put", OpBulkPut, "", func(c *Client) error {
			_, err := c.BulkPut(context.Background(), testNS, []BulkPair{{Key: "a", Value: []byte("v")}})
			return err
		}},
		{"list", OpList, "", func(c *Client) error {
			_, err := c.ListKeys(context.Background(), testNS, ListOptions{})
			return err
		}},
		{"get metadata", OpGetMetadata, "k/3", func(c *Client) error {
			_, err := c.GetMetadata(context.Background(), testNS, "k/3")
			return err
		}},
	}
	for _, tc := range cases {
		for _, op := range ops {
			t.Run(tc.name+"/"+op.name, func(t *testing.T) {
				c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) { tc.handler(t, w, r) })
				err := op.call(c)
				if err == nil {
					t.Fatal("no error")
				}
				if got := IsRetryable(err); got != tc.retryable {
					t.Errorf("IsRetryable = %v, want %v (%v)", got, tc.retryable, err)
				}
				ra, limited := IsRateLimited(err)
				if limited != tc.rateLimited || ra != tc.retryAfter && tc.rateLimited {
					t.Errorf("IsRateLimited = %v, %v; want %v, %v", ra, limited, tc.retryAfter, tc.rateLimited)
				}
				switch tc.kind {
				case kindAPI:
					var ae *APIError
					if !errors.As(err, &ae) {
						t.Fatalf("%T %v, want *APIError", err, err)
					}
					if ae.Op != op.op || ae.Key != op.key || ae.StatusCode != tc.status || StatusCode(err) != tc.status {
						t.Errorf("APIError op %s key %q status %d, want %s %q %d", ae.Op, ae.Key, ae.StatusCode, op.op, op.key, tc.status)
					}
					if codes := ae.Codes(); !reflect.DeepEqual(codes, tc.codes) && len(codes)+len(tc.codes) > 0 {
						t.Errorf("codes %v, want %v", codes, tc.codes)
					}
					if ae.RetryAfter != tc.retryAfter {
						t.Errorf("RetryAfter %v, want %v", ae.RetryAfter, tc.retryAfter)
					}
					if !strings.Contains(ae.Detail, tc.detail) || (tc.detail == "") != (ae.Detail == "") {
						t.Errorf("Detail %q, want it to contain %q", ae.Detail, tc.detail)
					}
					for _, code := range tc.codes {
						if !strings.Contains(err.Error(), "code "+strconv.Itoa(code)) {
							t.Errorf("message %q lacks code %d", err, code)
						}
					}
				case kindNetwork:
					var ne *NetworkError
					if !errors.As(err, &ne) {
						t.Fatalf("%T %v, want *NetworkError", err, err)
					}
					if ne.Op != op.op || ne.Key != op.key {
						t.Errorf("NetworkError op %s key %q", ne.Op, ne.Key)
					}
					if StatusCode(err) != 0 {
						t.Errorf("StatusCode %d", StatusCode(err))
					}
				}
			})
		}
	}
}

func TestGetValueReplyClassification(t *testing.T) {
	cases := []struct {
		name      string
		handler   func(*testing.T, http.ResponseWriter, *http.Request)
		retryable bool
		network   bool
		status    int
	}{
		{"value cut off", func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			hijack(t, w, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial value")
		}, true, true, 0},
		{"404 HTML", func(_ *testing.T, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(404)
			io.WriteString(w, "<html>not here</html>")
		}, false, false, 404},
		{"503 envelope", func(_ *testing.T, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(503)
			io.WriteString(w, `{"success":false,"errors":[{"code":10001,"message":"unavailable"}]}`)
		}, true, false, 503},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) { tc.handler(t, w, r) })
			_, err := c.GetValue(context.Background(), testNS, "k")
			var ne *NetworkError
			if IsRetryable(err) != tc.retryable || errors.As(err, &ne) != tc.network || StatusCode(err) != tc.status {
				t.Errorf("err %v: retryable %v network %v status %d", err, IsRetryable(err), errors.As(err, &ne), StatusCode(err))
			}
		})
	}
}

func TestTransportAndContextErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(okHandler))
		base := srv.URL
		srv.Close()
		c, err := New(Options{BaseURL: base, AccountID: testAccount, Token: testToken})
		if err != nil {
			t.Fatal(err)
		}
		err = c.DeleteValue(context.Background(), testNS, "k")
		var ne *NetworkError
		if !errors.As(err, &ne) || !IsRetryable(err) || ne.Key != "k" || ne.Op != OpDelete {
			t.Errorf("got %T %v, want a retryable NetworkError", err, err)
		}
	})
	t.Run("canceled before sending", func(t *testing.T) {
		c, n := newTestClient(t, okHandler)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{})
		if !errors.Is(err, context.Canceled) || IsRetryable(err) {
			t.Errorf("got %v, want context.Canceled, not retryable", err)
		}
		var ne *NetworkError
		if errors.As(err, &ne) {
			t.Errorf("context error reported as a NetworkError: %v", err)
		}
		if n.Load() != 0 {
			t.Errorf("%d requests", n.Load())
		}
	})
	t.Run("deadline while the server stalls", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := c.ListKeys(ctx, testNS, ListOptions{})
		if !errors.Is(err, context.DeadlineExceeded) || IsRetryable(err) {
			t.Errorf("got %v, want context.DeadlineExceeded, not retryable", err)
		}
	})
	t.Run("canceled while reading the reply", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, `{"success":true,`)
			w.(http.Flusher).Flush()
			cancel()
			<-r.Context().Done()
		})
		_, err := c.ListKeys(ctx, testNS, ListOptions{})
		if !errors.Is(err, context.Canceled) || IsRetryable(err) {
			t.Errorf("got %v, want context.Canceled", err)
		}
	})
}

// TestCertificateVerificationIsPermanent: a TLS handshake refused because the
// server's certificate failed verification is ErrCertificateNotTrusted and
// never retryable, however the HTTP client wraps it; other network failures
// stay retryable.
func TestCertificateVerificationIsPermanent(t *testing.T) {
	cert := &x509.Certificate{Raw: []byte("not really a certificate")}
	cases := []struct {
		name      string
		cause     error
		untrusted bool
	}{
		{"unknown authority", x509.UnknownAuthorityError{Cert: cert}, true},
		{"hostname mismatch", x509.HostnameError{Certificate: cert, Host: "api.example"}, true},
		{"expired", x509.CertificateInvalidError{Cert: cert, Reason: x509.Expired}, true},
		{"tls verification", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{Cert: cert}}, true},
		{"connection refused", syscall.ECONNREFUSED, false},
		{"handshake cut off", io.ErrUnexpectedEOF, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := error(&NetworkError{Op: OpPut, Key: "k", Err: &url.Error{Op: "Put", URL: "https://api.example/x", Err: tc.cause}})
			if got := errors.Is(err, ErrCertificateNotTrusted); got != tc.untrusted {
				t.Errorf("errors.Is(ErrCertificateNotTrusted) = %v, want %v", got, tc.untrusted)
			}
			if got := IsRetryable(err); got == tc.untrusted {
				t.Errorf("IsRetryable = %v, want %v", got, !tc.untrusted)
			}
			if got := strings.Contains(err.Error(), "certificate is not trusted"); got != tc.untrusted {
				t.Errorf("message %q says the certificate is not trusted: %v, want %v", err, got, tc.untrusted)
			}
			if !errors.Is(err, tc.cause) {
				t.Errorf("the transport's error is no longer reachable through %v", err)
			}
		})
	}

	t.Run("real handshake", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.HandlerFunc(okHandler))
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		t.Cleanup(srv.Close)
		// http.DefaultClient trusts the system roots, not httptest's CA.
		c, err := New(Options{BaseURL: srv.URL, AccountID: testAccount, Token: testToken, HTTPClient: &http.Client{}})
		if err != nil {
			t.Fatal(err)
		}
		err = c.DeleteValue(context.Background(), testNS, "k")
		var ne *NetworkError
		if !errors.As(err, &ne) || !errors.Is(err, ErrCertificateNotTrusted) || IsRetryable(err) {
			t.Errorf("got %T %v, want a permanent NetworkError matching ErrCertificateNotTrusted", err, err)
		}
	})
}

// TestSentinelTexts pins the messages derived from the limits to the way
// Cloudflare's documentation states those limits: a limit whose constant
// changes, or stops being round, changes a message and fails here.
func TestSentinelTexts(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{ErrKeyTooLong, "key is longer than 512 bytes"},
		{ErrValueTooLarge, "value is larger than 25 MiB"},
		{ErrMetadataTooLarge, "metadata is larger than 1024 bytes"},
		{ErrTTLTooShort, "expiration_ttl is under 60 seconds"},
		{ErrExpirationTooSoon, "expiration is less than 60 seconds ahead"},
		{ErrBulkTooLarge, "bulk request exceeds 10,000 pairs or 100 MB"},
		{ErrListLimit, "list limit is outside 10..1000"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 10000: "10,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
