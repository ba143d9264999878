package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// replayTransport answers every request with one canned reply, so the fuzzer
// reaches the client's reply parsing without a socket per execution.
type replayTransport struct {
	status int
	header http.Header
	body   []byte
}

func (rt replayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{
		StatusCode:    rt.status,
		Status:        http.StatusText(rt.status),
		Header:        rt.header.Clone(),
		Body:          io.NopCloser(bytes.NewReader(rt.body)),
		ContentLength: int64(len(rt.body)),
		Request:       req,
		Proto:         "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}, nil
}

// FuzzEnvelope feeds arbitrary replies (status, body, Retry-After and
// Expiration headers) to every client operation. Whatever a server, a proxy
// or a broken middlebox answers, the client must not panic, and must return
// either a result or one of its typed errors: a non-2xx reply is always an
// *APIError carrying that status, and a success is only ever reported for a
// 2xx reply whose envelope said success:true (or, for a value read, for the
// raw bytes of a 2xx reply).
func FuzzEnvelope(f *testing.F) {
	for _, s := range []struct {
		op     uint8
		status int
		body   string
		retry  string
		exp    string
	}{
		{0, 200, `{"success":true,"errors":[],"messages":[],"result":null}`, "", ""},
		{0, 200, `{"success":false,"errors":[{"code":10001,"message":"boom"}]}`, "", ""},
		{0, 200, `{"success":true`, "", ""},
		{0, 200, `<html>gateway</html>`, "", ""},
		{0, 200, ``, "", ""},
		{0, 429, `{"success":false,"errors":[{"code":971,"message":"wait"}]}`, "99999999999999999999", ""},
		{0, 429, ``, "Wed, 21 Oct 2099 07:28:00 GMT", ""},
		{0, 503, `<html>`, "-5", ""},
		{1, 200, `{"success":true,"errors":[],"result":{"successful_key_count":1,"unsuccessful_keys":["b"]}}`, "", ""},
		{1, 200, `{"success":true,"errors":[],"result":{"successful_key_count":"x"}}`, "", ""},
		{1, 200, `{"success":true,"errors":[],"result":[1,2]}`, "", ""},
		{3, 200, `{"success":true,"errors":[],"result":{"successful_key_count":2}}`, "", ""},
		{4, 200, `{"success":true,"errors":[],"result":[{"name":"a","expiration":1,"metadata":{"x":1}}],"result_info":{"cursor":"c","count":1}}`, "", ""},
		{4, 200, `{"success":true,"errors":[],"result":{"name":"a"},"result_info":"x"}`, "", ""},
		{5, 200, `raw value bytes`, "", "1800000000"},
		{5, 200, `raw`, "", "not-a-number"},
		{5, 404, `{"success":false,"errors":[{"code":10009,"message":"get: 'key not found'"}]}`, "", ""},
		{6, 200, `{"success":true,"errors":[],"result":{"a":1}}`, "", ""},
		{6, 200, `{"success":true,"errors":[],"result":"`, "", ""},
		{2, 302, ``, "", ""},
		{2, 204, ``, "", ""},
	} {
		f.Add(s.op, s.status, []byte(s.body), s.retry, s.exp)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, op uint8, status int, body []byte, retryAfter, expiration string) {
		if status < 200 || status > 599 {
			status = 200 + (status%400+400)%400
		}
		h := http.Header{"Content-Type": {"application/json"}}
		if retryAfter != "" && validHeaderValue(retryAfter) {
			h.Set("Retry-After", retryAfter)
		}
		if expiration != "" && validHeaderValue(expiration) {
			h.Set("Expiration", expiration)
		}
		c, err := New(Options{
			BaseURL:    "http://127.0.0.1/client/v4",
			AccountID:  testAccount,
			Token:      testToken,
			HTTPClient: &http.Client{Transport: replayTransport{status: status, header: h, body: body}},
			Now:        func() time.Time { return testNow },
		})
		if err != nil {
			t.Fatal(err)
		}

		var value []byte
		switch op % 7 {
		case 0:
			err = c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{Metadata: json.RawMessage(`{"a":1}`)})
		case 1:
			var res BulkResult
			res, err = c.BulkPut(ctx, testNS, []BulkPair{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte{0xff}}})
			if err == nil && (res.SuccessfulKeyCount < 0 || len(res.Unsuccessful) > 0 && res.Unsuccessful == nil) {
				t.Fatalf("bulk result %+v", res)
			}
		case 2:
			err = c.DeleteValue(ctx, testNS, "k")
		case 3:
			_, err = c.BulkDelete(ctx, testNS, []string{"a", "b"})
		case 4:
			_, err = c.ListKeys(ctx, testNS, ListOptions{Limit: 10})
		case 5:
			var vi ValueInfo
			vi, err = c.GetValue(ctx, testNS, "k")
			value = vi.Value
			if err == nil && vi.Expiration < 0 {
				t.Fatalf("negative expiration %d accepted", vi.Expiration)
			}
		case 6:
			var md json.RawMessage
			md, err = c.GetMetadata(ctx, testNS, "k")
			if err == nil && !json.Valid(md) {
				t.Fatalf("metadata %q is not JSON", md)
			}
		}

		if err == nil {
			if status > 299 {
				t.Fatalf("op %d: HTTP %d reported as success", op%7, status)
			}
			if op%7 == 5 {
				if !bytes.Equal(value, body) {
					t.Fatalf("value read returned %q, the reply was %q", value, body)
				}
				return
			}
			var env struct {
				Success bool `json:"success"`
			}
			if json.Unmarshal(body, &env) != nil || !env.Success {
				t.Fatalf("op %d: reply %q reported as success", op%7, body)
			}
			return
		}
		var ae *APIError
		var ne *NetworkError
		switch {
		case errors.As(err, &ae):
			if status > 299 && ae.StatusCode != status {
				t.Fatalf("HTTP %d became an APIError with status %d", status, ae.StatusCode)
			}
			if ae.RetryAfter < 0 || ae.RetryAfter > maxRetryAfter {
				t.Fatalf("Retry-After %q became %s", retryAfter, ae.RetryAfter)
			}
			if strings.Contains(ae.Error(), testToken) {
				t.Fatalf("error quotes the token: %v", ae)
			}
		case errors.As(err, &ne):
			if status > 299 {
				t.Fatalf("HTTP %d became a NetworkError: %v", status, err)
			}
		default:
			t.Fatalf("op %d, HTTP %d, body %q: untyped error %T: %v", op%7, status, body, err, err)
		}
	})
}
