package kvapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// endpoint builds .../accounts/{account}/storage/kv/namespaces/{ns}{suffix}[/{key}].
// Every variable part is escaped as one path segment, and the URL carries
// both forms (Path, RawPath), so Go sends the escaped one: a key "a/b"
// travels as a%2Fb, never as two segments.
func (c *Client) endpoint(ns, suffix, key string, q url.Values) *url.URL {
	raw := c.base.EscapedPath() + "/accounts/" + escapeSegment(c.accountID) +
		"/storage/kv/namespaces/" + escapeSegment(ns) + suffix
	plain := c.base.Path + "/accounts/" + c.accountID + "/storage/kv/namespaces/" + ns + suffix
	if key != "" {
		raw += "/" + escapeSegment(key)
		plain += "/" + key
	}
	u := *c.base
	u.Path, u.RawPath = plain, raw
	u.RawQuery = q.Encode()
	return &u
}

// escapeSegment percent-encodes every byte outside RFC 3986's unreserved
// set. That is stricter than url.PathEscape (which leaves : @ & = + $ as
// they are), so no proxy or router can read any byte of a key as syntax.
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) * 3)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if 'A' <= ch && ch <= 'Z' || 'a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' ||
			ch == '-' || ch == '_' || ch == '.' || ch == '~' {
			b.WriteByte(ch)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[ch>>4])
		b.WriteByte(hex[ch&0xf])
	}
	return b.String()
}

// newRequest builds a request with the auth and user-agent headers. A
// non-nil body must be exactly size bytes, and reopen must produce it again
// from the start (http.Request.GetBody).
func (c *Client) newRequest(ctx context.Context, method string, u *url.URL, body io.ReadCloser, size int64, reopen func() (io.ReadCloser, error)) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Body = body
		req.ContentLength = size
		req.GetBody = reopen
		if size == 0 {
			// ContentLength 0 with a non-nil Body means "unknown" to net/http.
			req.Body.Close()
			req.Body = http.NoBody
		}
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	} else {
		req.Header.Set("X-Auth-Email", c.email)
		req.Header.Set("X-Auth-Key", c.apiKey)
	}
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	return req, nil
}

// send runs the round trip and classifies a failure: the value's own fault,
// the caller's context, or the network.
func (c *Client) send(ctx context.Context, op Op, key string, req *http.Request, fault *bodyFault) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err == nil {
		return resp, nil
	}
	if fault != nil {
		if ferr := fault.get(); ferr != nil {
			return nil, &ValueError{Op: op, Key: key, Err: ferr}
		}
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return nil, contextError(op, key, ctxErr)
	}
	return nil, &NetworkError{Op: op, Key: key, Err: err}
}

func contextError(op Op, key string, err error) error {
	if key == "" {
		return fmt.Errorf("kv %s: %w", op, err)
	}
	return fmt.Errorf("kv %s key %q: %w", op, key, err)
}
