package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

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
	items, size, err := encodeBulk(pairs, c.now())
	if err != nil {
		return BulkResult{}, err
	}
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
