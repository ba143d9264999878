package kvapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	// maxErrorBody bounds what is read of a failure reply: Cloudflare's error
	// envelopes are a few hundred bytes, and a proxy's HTML page needs no more
	// than its start to be recognised.
	maxErrorBody = 1 << 20
	// maxEnvelopeBody bounds a success envelope. The largest legitimate one
	// is a bulk result naming MaxBulkPairs unsuccessful keys of MaxKeyBytes
	// (about 5 MB plus escaping) or a listing of MaxListLimit keys with
	// MaxMetadataBytes of metadata each.
	maxEnvelopeBody = 32 << 20
	// maxRetryAfter caps the server's Retry-After. Cloudflare's documented
	// block is five minutes; an hour or more only comes from a broken proxy
	// or an HTTP-date read with a skewed clock, and obeying it would park
	// the daemon for that long.
	maxRetryAfter = time.Hour
	// detailSnippet is how much of a malformed reply an APIError quotes.
	detailSnippet = 160
)

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
