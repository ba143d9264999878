package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultBaseURL is the Cloudflare API v4 endpoint.
const DefaultBaseURL = "https://api.cloudflare.com/client/v4"

// DefaultUserAgent is sent when Options.UserAgent is empty.
const DefaultUserAgent = "kvsync/dev"

const (
	// maxErrorBody bounds what is read of a failure reply: Cloudflare's error
	// envelopes are a few hundred bytes, and a proxy's HTML page needs no more
	// than its start to be recognised.
	maxErrorBody = 1 << 20
	// maxEnvelopeBody bounds a success envelope. The largest legitimate one
	// is a bulk result naming 10,000 unsuccessful 512-byte keys (about 5 MB
	// plus escaping) or a 1,000-key listing with 1 KiB of metadata each.
	maxEnvelopeBody = 32 << 20
	// maxRetryAfter caps the server's Retry-After. Cloudflare's documented
	// block is five minutes; an hour or more only comes from a broken proxy
	// or an HTTP-date read with a skewed clock, and obeying it would park
	// the daemon for that long.
	maxRetryAfter = time.Hour
	// detailSnippet is how much of a malformed reply an APIError quotes.
	detailSnippet = 160
)

// ErrInvalidOptions is the cause of every error New returns.
var ErrInvalidOptions = errors.New("invalid kv client options")

// Options configure a Client.
type Options struct {
	// BaseURL is the API root; DefaultBaseURL when empty. A trailing slash is
	// tolerated.
	BaseURL string
	// AccountID is the Cloudflare account that owns the namespaces.
	AccountID string
	// Token is an API token (Authorization: Bearer). Set either Token, or
	// Email and APIKey (the legacy global key), not both.
	Token string
	// Email and APIKey are the legacy X-Auth-Email/X-Auth-Key pair.
	Email, APIKey string
	// HTTPClient sends the requests; when nil, one with connect, TLS and
	// response-header timeouts is used. The Client works on a copy that
	// follows redirects only within the original scheme, host and port.
	HTTPClient *http.Client
	// UserAgent is sent with every request; DefaultUserAgent when empty.
	UserAgent string
	// Now is the clock used to check absolute expirations and HTTP-date
	// Retry-After values; time.Now when nil.
	Now func() time.Time
}

// String describes the options with every credential redacted.
func (o Options) String() string {
	return fmt.Sprintf("kvapi.Options{BaseURL:%q AccountID:%q Token:%s Email:%q APIKey:%s UserAgent:%q}",
		o.BaseURL, o.AccountID, redacted(o.Token), o.Email, redacted(o.APIKey), o.UserAgent)
}

// GoString is String, so that %#v does not print the credentials either.
func (o Options) GoString() string { return o.String() }

func redacted(secret string) string {
	if secret == "" {
		return `""`
	}
	return "[redacted]"
}

// Client talks to the Workers KV REST API of one account over HTTP. It is
// safe for concurrent use. It neither retries nor rate-limits: every reply
// becomes a result or a typed error (*ValidationError, *APIError,
// *NetworkError, *ValueError, or a context error) for the caller to act on.
type Client struct {
	base      *url.URL
	accountID string
	token     string
	email     string
	apiKey    string
	hc        *http.Client
	userAgent string
	now       func() time.Time
}

var _ KV = (*Client)(nil)

// New validates opts and returns a Client.
func New(opts Options) (*Client, error) {
	bad := func(format string, args ...any) (*Client, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, args...)...)
	}
	raw := opts.BaseURL
	if raw == "" {
		raw = DefaultBaseURL
	}
	base, err := url.Parse(raw)
	if err != nil {
		return bad("BaseURL %q: %v", raw, err)
	}
	if base.Scheme != "http" && base.Scheme != "https" {
		return bad("BaseURL %q: scheme must be http or https", raw)
	}
	if base.Host == "" || base.User != nil || base.RawQuery != "" || base.Fragment != "" || base.Opaque != "" {
		return bad("BaseURL %q: want scheme://host[:port][/path] without credentials, query or fragment", raw)
	}
	base.Path = strings.TrimRight(base.Path, "/")
	base.RawPath = strings.TrimRight(base.RawPath, "/")

	if opts.AccountID == "" {
		return bad("AccountID is empty")
	}
	switch tokenSet, keySet := opts.Token != "", opts.Email != "" || opts.APIKey != ""; {
	case tokenSet && keySet:
		return bad("both Token and Email/APIKey are set; use one authentication method")
	case !tokenSet && !keySet:
		return bad("no credentials: set Token, or Email and APIKey")
	case keySet && (opts.Email == "" || opts.APIKey == ""):
		return bad("Email and APIKey must be set together")
	}
	// The values are checked, never quoted: an error must not leak a secret.
	for _, f := range []struct{ name, v string }{
		{"Token", opts.Token}, {"Email", opts.Email}, {"APIKey", opts.APIKey}, {"UserAgent", opts.UserAgent},
	} {
		if !validHeaderValue(f.v) {
			return bad("%s contains whitespace at an end or characters not allowed in an HTTP header", f.name)
		}
	}

	c := &Client{
		base:      base,
		accountID: opts.AccountID,
		token:     opts.Token,
		email:     opts.Email,
		apiKey:    opts.APIKey,
		hc:        opts.HTTPClient,
		userAgent: opts.UserAgent,
		now:       opts.Now,
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient()
	}
	c.hc = sameOriginRedirects(c.hc)
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// String names the endpoint and account, never the credentials.
func (c *Client) String() string {
	auth := "token"
	if c.token == "" {
		auth = "email+key"
	}
	return fmt.Sprintf("kvapi.Client{%s account %s, auth %s}", c.base.Redacted(), c.accountID, auth)
}

// GoString is String, so that %#v does not print the credentials either.
func (c *Client) GoString() string { return c.String() }

// defaultHTTPClient bounds every phase that can hang on a dead peer, and
// the whole exchange generously enough for a 25 MiB value on a slow link;
// callers bound individual requests with their context.
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = 2 * time.Minute
	t.ExpectContinueTimeout = time.Second
	t.IdleConnTimeout = 90 * time.Second
	t.MaxIdleConnsPerHost = 16
	return &http.Client{Transport: t, Timeout: 15 * time.Minute}
}

// sameOriginRedirects returns a copy of hc that follows a redirect only to
// the origin (scheme, host and port) of the original request. net/http drops
// Authorization on a cross-domain redirect but forwards X-Auth-Email and
// X-Auth-Key, and would follow https to http; neither may happen to a
// credential. A refused redirect comes back as the 3xx reply, an *APIError.
func sameOriginRedirects(hc *http.Client) *http.Client {
	cp := *hc
	next := hc.CheckRedirect
	cp.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if first := via[0].URL; req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
			return http.ErrUseLastResponse
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &cp
}

func validHeaderValue(v string) bool {
	if strings.TrimSpace(v) != v {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// PutValue writes one value as multipart/form-data, streamed from v.Open
// with an exact Content-Length; a retried or redirected request reopens v.
func (c *Client) PutValue(ctx context.Context, ns, key string, v Value, opts PutOptions) error {
	if err := checkNamespace(ns, key); err != nil {
		return err
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	if v == nil || v.Size() < 0 {
		return &ValidationError{Field: "value", Key: key, Err: ErrValueInvalid}
	}
	size := v.Size()
	if size > MaxValueBytes {
		return &ValidationError{Field: "value", Key: key, Err: fmt.Errorf("%w: %d bytes", ErrValueTooLarge, size)}
	}
	meta, err := ValidateMetadata(opts.Metadata)
	if err != nil {
		return withKey(err, key)
	}
	if err := ValidateExpiration(opts.Expiration, opts.ExpirationTTL, c.now()); err != nil {
		return withKey(err, key)
	}
	frame, err := newMultipartFrame(meta)
	if err != nil {
		return fmt.Errorf("kv %s key %q: building body: %w", OpPut, key, err)
	}
	q := url.Values{}
	switch {
	case opts.ExpirationTTL > 0:
		q.Set("expiration_ttl", strconv.FormatInt(opts.ExpirationTTL, 10))
	case opts.Expiration > 0:
		q.Set("expiration", strconv.FormatInt(opts.Expiration, 10))
	}

	fault := &bodyFault{}
	open := func() (io.ReadCloser, error) {
		r, err := v.Open()
		if err != nil {
			return nil, fault.set(err)
		}
		return &putBody{head: frame.head, tail: frame.tail, value: r, remain: size, fault: fault}, nil
	}
	body, err := open()
	if err != nil {
		return &ValueError{Op: OpPut, Key: key, Err: err}
	}
	req, err := c.newRequest(ctx, http.MethodPut, c.endpoint(ns, "/values", key, q), body, frame.length(size), open)
	if err != nil {
		body.Close()
		return fmt.Errorf("kv %s key %q: %w", OpPut, key, err)
	}
	req.Header.Set("Content-Type", frame.contentType)
	resp, err := c.send(ctx, OpPut, key, req, fault)
	if err != nil {
		return err
	}
	_, err = c.envelope(ctx, OpPut, key, resp)
	return err
}

// BulkPut validates every pair, then streams them as one JSON array. Values
// that are valid UTF-8 travel as JSON strings, others base64-encoded with
// base64:true. The API's bulk value maxLength counts the encoded string, so a
// binary value over about 18.75 MiB may be refused by the server although it
// is within MaxValueBytes; such values belong in PutValue.
func (c *Client) BulkPut(ctx context.Context, ns string, pairs []BulkPair) (BulkResult, error) {
	if err := checkNamespace(ns, ""); err != nil {
		return BulkResult{}, err
	}
	if len(pairs) == 0 {
		return BulkResult{}, nil
	}
	if len(pairs) > MaxBulkPairs {
		return BulkResult{}, &ValidationError{Field: "bulk", Err: fmt.Errorf("%w: %d pairs", ErrBulkTooLarge, len(pairs))}
	}
	now := c.now()
	items := make([]bulkItem, len(pairs))
	for i, p := range pairs {
		if err := ValidateKey(p.Key); err != nil {
			return BulkResult{}, err
		}
		if len(p.Value) > MaxValueBytes {
			return BulkResult{}, &ValidationError{Field: "value", Key: p.Key, Err: fmt.Errorf("%w: %d bytes", ErrValueTooLarge, len(p.Value))}
		}
		meta, err := ValidateMetadata(p.Metadata)
		if err != nil {
			return BulkResult{}, withKey(err, p.Key)
		}
		if err := ValidateExpiration(p.Expiration, p.ExpirationTTL, now); err != nil {
			return BulkResult{}, withKey(err, p.Key)
		}
		items[i] = newBulkItem(p.Key, p.Value, meta, p.Expiration, p.ExpirationTTL, !utf8.Valid(p.Value), i == 0)
	}
	size := bulkLength(items)
	if size > MaxBulkRequestBytes {
		return BulkResult{}, &ValidationError{Field: "bulk", Err: fmt.Errorf("%w: %d bytes encoded", ErrBulkTooLarge, size)}
	}
	open := func() (io.ReadCloser, error) { return newBulkBody(items), nil }
	body, _ := open()
	req, err := c.newRequest(ctx, http.MethodPut, c.endpoint(ns, "/bulk", "", nil), body, size, open)
	if err != nil {
		return BulkResult{}, fmt.Errorf("kv %s: %w", OpBulkPut, err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.bulkRoundTrip(ctx, OpBulkPut, req, len(pairs))
}

// DeleteValue deletes one key; the request has no body.
func (c *Client) DeleteValue(ctx context.Context, ns, key string) error {
	if err := checkNamespace(ns, key); err != nil {
		return err
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	req, err := c.newRequest(ctx, http.MethodDelete, c.endpoint(ns, "/values", key, nil), nil, 0, nil)
	if err != nil {
		return fmt.Errorf("kv %s key %q: %w", OpDelete, key, err)
	}
	resp, err := c.send(ctx, OpDelete, key, req, nil)
	if err != nil {
		return err
	}
	_, err = c.envelope(ctx, OpDelete, key, resp)
	return err
}

// BulkDelete deletes keys with POST .../bulk/delete (the DELETE .../bulk
// form is deprecated).
func (c *Client) BulkDelete(ctx context.Context, ns string, keys []string) (BulkResult, error) {
	if err := checkNamespace(ns, ""); err != nil {
		return BulkResult{}, err
	}
	if len(keys) == 0 {
		return BulkResult{}, nil
	}
	if len(keys) > MaxBulkPairs {
		return BulkResult{}, &ValidationError{Field: "bulk", Err: fmt.Errorf("%w: %d keys", ErrBulkTooLarge, len(keys))}
	}
	for _, k := range keys {
		if err := ValidateKey(k); err != nil {
			return BulkResult{}, err
		}
	}
	data, err := json.Marshal(keys)
	if err != nil {
		return BulkResult{}, fmt.Errorf("kv %s: %w", OpBulkDelete, err)
	}
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	body, _ := open()
	req, err := c.newRequest(ctx, http.MethodPost, c.endpoint(ns, "/bulk/delete", "", nil), body, int64(len(data)), open)
	if err != nil {
		return BulkResult{}, fmt.Errorf("kv %s: %w", OpBulkDelete, err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.bulkRoundTrip(ctx, OpBulkDelete, req, len(keys))
}

func (c *Client) bulkRoundTrip(ctx context.Context, op Op, req *http.Request, n int) (BulkResult, error) {
	resp, err := c.send(ctx, op, "", req, nil)
	if err != nil {
		return BulkResult{}, err
	}
	env, err := c.envelope(ctx, op, "", resp)
	if err != nil {
		return BulkResult{}, err
	}
	// Older revisions of the API answer a bulk request with result null:
	// everything was written.
	if len(env.Result) == 0 || string(env.Result) == "null" {
		return BulkResult{SuccessfulKeyCount: n}, nil
	}
	var r struct {
		Successful   *int     `json:"successful_key_count"`
		Unsuccessful []string `json:"unsuccessful_keys"`
	}
	if err := json.Unmarshal(env.Result, &r); err != nil {
		return BulkResult{}, &APIError{Op: op, StatusCode: resp.StatusCode, Detail: "malformed bulk result: " + err.Error()}
	}
	res := BulkResult{Unsuccessful: r.Unsuccessful}
	if r.Successful != nil {
		res.SuccessfulKeyCount = *r.Successful
	} else {
		res.SuccessfulKeyCount = max(0, n-len(r.Unsuccessful))
	}
	return res, nil
}

// ListKeys returns one page of keys. A page may be empty while its cursor
// is not; only an empty cursor ends a listing.
func (c *Client) ListKeys(ctx context.Context, ns string, opts ListOptions) (KeyPage, error) {
	if err := checkNamespace(ns, ""); err != nil {
		return KeyPage{}, err
	}
	q := url.Values{}
	if opts.Limit != 0 {
		if opts.Limit < MinListLimit || opts.Limit > MaxListLimit {
			return KeyPage{}, &ValidationError{Field: "limit", Err: fmt.Errorf("%w: %d", ErrListLimit, opts.Limit)}
		}
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Prefix != "" {
		q.Set("prefix", opts.Prefix)
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	req, err := c.newRequest(ctx, http.MethodGet, c.endpoint(ns, "/keys", "", q), nil, 0, nil)
	if err != nil {
		return KeyPage{}, fmt.Errorf("kv %s: %w", OpList, err)
	}
	resp, err := c.send(ctx, OpList, "", req, nil)
	if err != nil {
		return KeyPage{}, err
	}
	env, err := c.envelope(ctx, OpList, "", resp)
	if err != nil {
		return KeyPage{}, err
	}
	var page KeyPage
	if len(env.Result) > 0 && string(env.Result) != "null" {
		if err := json.Unmarshal(env.Result, &page.Keys); err != nil {
			return KeyPage{}, &APIError{Op: OpList, StatusCode: resp.StatusCode, Detail: "malformed key list: " + err.Error()}
		}
	}
	if env.ResultInfo != nil {
		page.Cursor = env.ResultInfo.Cursor
	}
	return page, nil
}

// GetValue reads a value. The reply is the raw bytes, not an envelope; the
// expiration, if any, comes in the expiration header.
func (c *Client) GetValue(ctx context.Context, ns, key string) (ValueInfo, error) {
	if err := checkNamespace(ns, key); err != nil {
		return ValueInfo{}, err
	}
	if err := ValidateKey(key); err != nil {
		return ValueInfo{}, err
	}
	req, err := c.newRequest(ctx, http.MethodGet, c.endpoint(ns, "/values", key, nil), nil, 0, nil)
	if err != nil {
		return ValueInfo{}, fmt.Errorf("kv %s key %q: %w", OpGet, key, err)
	}
	req.Header.Set("Accept", "application/octet-stream")
	resp, err := c.send(ctx, OpGet, key, req, nil)
	if err != nil {
		return ValueInfo{}, err
	}
	if !success(resp.StatusCode) {
		_, err := c.envelope(ctx, OpGet, key, resp)
		return ValueInfo{}, err
	}
	defer drainClose(resp.Body)
	data, over, err := readLimited(ctx, OpGet, key, resp, MaxValueBytes)
	if err != nil {
		return ValueInfo{}, err
	}
	if over {
		return ValueInfo{}, &APIError{Op: OpGet, Key: key, StatusCode: resp.StatusCode,
			Detail: fmt.Sprintf("value is larger than %d bytes", MaxValueBytes)}
	}
	info := ValueInfo{Value: data}
	if h := resp.Header.Get("Expiration"); h != "" {
		exp, err := strconv.ParseInt(strings.TrimSpace(h), 10, 64)
		if err != nil || exp < 0 {
			return ValueInfo{}, &APIError{Op: OpGet, Key: key, StatusCode: resp.StatusCode,
				Detail: fmt.Sprintf("malformed expiration header %q", truncate(h))}
		}
		info.Expiration = exp
	}
	return info, nil
}

// GetMetadata reads a key's metadata: the envelope's result, raw.
func (c *Client) GetMetadata(ctx context.Context, ns, key string) (json.RawMessage, error) {
	if err := checkNamespace(ns, key); err != nil {
		return nil, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	req, err := c.newRequest(ctx, http.MethodGet, c.endpoint(ns, "/metadata", key, nil), nil, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("kv %s key %q: %w", OpGetMetadata, key, err)
	}
	resp, err := c.send(ctx, OpGetMetadata, key, req, nil)
	if err != nil {
		return nil, err
	}
	env, err := c.envelope(ctx, OpGetMetadata, key, resp)
	if err != nil {
		return nil, err
	}
	if len(env.Result) == 0 {
		return json.RawMessage("null"), nil
	}
	return env.Result, nil
}

func checkNamespace(ns, key string) error {
	if ns == "" {
		return &ValidationError{Field: "namespace", Key: key, Err: ErrNamespaceEmpty}
	}
	return nil
}

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

// envelope is the JSON wrapper of every reply except a value read.
type envelope struct {
	Success    *bool           `json:"success"`
	Errors     []ErrorItem     `json:"errors"`
	Result     json.RawMessage `json:"result"`
	ResultInfo *struct {
		Cursor string `json:"cursor"`
	} `json:"result_info"`
}

// envelope reads and closes resp's body and turns it into an envelope that
// said success:true, or an error.
func (c *Client) envelope(ctx context.Context, op Op, key string, resp *http.Response) (envelope, error) {
	defer drainClose(resp.Body)
	if !success(resp.StatusCode) {
		return envelope{}, c.failure(ctx, op, key, resp)
	}
	body, over, err := readLimited(ctx, op, key, resp, maxEnvelopeBody)
	if err != nil {
		return envelope{}, err
	}
	apiErr := &APIError{Op: op, Key: key, StatusCode: resp.StatusCode, RetryAfter: c.retryAfter(resp)}
	if over {
		apiErr.Detail = fmt.Sprintf("reply is larger than %d bytes", maxEnvelopeBody)
		return envelope{}, apiErr
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		apiErr.Detail = malformed(body, err)
		return envelope{}, apiErr
	}
	if env.Success == nil || !*env.Success {
		apiErr.Errors = env.Errors
		if len(env.Errors) == 0 {
			apiErr.Detail = "reply did not say success:true"
		}
		return envelope{}, apiErr
	}
	return env, nil
}

// failure turns a non-2xx reply into an *APIError. A body that cannot be
// read completely still yields the status, which is what classifies it.
func (c *Client) failure(ctx context.Context, op Op, key string, resp *http.Response) error {
	apiErr := &APIError{Op: op, Key: key, StatusCode: resp.StatusCode, RetryAfter: c.retryAfter(resp)}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return contextError(op, key, ctxErr)
		}
		apiErr.Detail = "reading reply: " + err.Error()
		return apiErr
	}
	if len(body) == 0 {
		apiErr.Detail = "empty reply"
		return apiErr
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		apiErr.Detail = malformed(body, err)
		return apiErr
	}
	apiErr.Errors = env.Errors
	if len(env.Errors) == 0 {
		apiErr.Detail = "reply has no errors"
	}
	return apiErr
}

// readLimited reads up to limit bytes of a 2xx body. A body that breaks off
// is a *NetworkError: the reply is incomplete, and whether the server acted
// on the request is unknown, exactly as with a dropped connection.
func readLimited(ctx context.Context, op Op, key string, resp *http.Response, limit int64) ([]byte, bool, error) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, false, contextError(op, key, ctxErr)
		}
		return nil, false, &NetworkError{Op: op, Key: key, Err: fmt.Errorf("reading HTTP %d reply: %w", resp.StatusCode, err)}
	}
	if int64(len(body)) > limit {
		return nil, true, nil
	}
	return body, false, nil
}

func malformed(body []byte, err error) string {
	return fmt.Sprintf("reply is not a JSON envelope (%v): %q", err, truncate(string(body)))
}

func truncate(s string) string {
	if len(s) <= detailSnippet {
		return s
	}
	return s[:detailSnippet] + "..."
}

func success(status int) bool { return status >= 200 && status <= 299 }

// drainClose reads a little of what is left so the connection can be
// reused, without waiting on a large unwanted body.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}

func (c *Client) retryAfter(resp *http.Response) time.Duration {
	return parseRetryAfter(resp.Header.Get("Retry-After"), c.now())
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP-date, capped
// at maxRetryAfter. It returns 0 when the header is absent, malformed or in
// the past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if secs <= 0 {
			return 0
		}
		if secs >= int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		switch {
		case d <= 0:
			return 0
		case d > maxRetryAfter:
			return maxRetryAfter
		}
		return d
	}
	return 0
}
