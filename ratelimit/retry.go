package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// Retry defaults. They follow cloudflare-go and promtail: a short first
// backoff that doubles, capped so a flapping API is probed at least twice a
// minute.
const (
	DefaultMaxAttempts = 6
	DefaultBaseDelay   = 500 * time.Millisecond
	DefaultMaxDelay    = 30 * time.Second
	// DefaultRetryAfter is the pause after a 429 that carries no Retry-After.
	// Cloudflare sends Retry-After whenever its budget is exceeded, so a bare
	// 429 is unusual; a minute is long enough not to hammer a blocked account
	// and, over the default 5 retries, spans the 5-minute block in full.
	DefaultRetryAfter = 60 * time.Second
)

// RetryPolicy says how often and how patiently a request is sent again. Zero
// fields take the defaults above.
type RetryPolicy struct {
	// MaxAttempts is the total number of tries, the first included.
	MaxAttempts int
	// BaseDelay is the backoff cap before the second try; it doubles per try.
	BaseDelay time.Duration
	// MaxDelay caps the backoff (not a 429 pause, which the Limiter caps).
	MaxDelay time.Duration
	// DefaultRetryAfter is the pause after a 429 without Retry-After.
	DefaultRetryAfter time.Duration
	// Rand returns a number in [0,1) for jitter; nil means math/rand/v2.
	Rand func() float64
	// Sleep waits d or until ctx is done, returning ctx's error then; nil
	// means a timer. Tests inject it to record the backoff schedule.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts < 1 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = DefaultBaseDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	if p.DefaultRetryAfter <= 0 {
		p.DefaultRetryAfter = DefaultRetryAfter
	}
	if p.Rand == nil {
		p.Rand = rand.Float64
	}
	if p.Sleep == nil {
		p.Sleep = sleep
	}
	return p
}

// backoff is the delay before try attempt+1 after a failed try attempt
// (1-based): "full jitter", uniform in [0, min(MaxDelay, BaseDelay*2^(attempt-1))),
// so clients that failed together do not retry together.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	ceiling := p.MaxDelay
	if attempt-1 < 32 {
		if d := p.BaseDelay << (attempt - 1); d > 0 && d < ceiling {
			ceiling = d
		}
	}
	return time.Duration(p.Rand() * float64(ceiling))
}

// ExhaustedError is the last failure of a request that was tried
// MaxAttempts times. errors.As still finds the APIError or NetworkError in it.
type ExhaustedError struct {
	Op       kvapi.Op
	Key      string
	Attempts int
	Err      error
}

func (e *ExhaustedError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("kv %s key %q: giving up after %d attempts: %v", e.Op, e.Key, e.Attempts, e.Err)
	}
	return fmt.Sprintf("kv %s: giving up after %d attempts: %v", e.Op, e.Attempts, e.Err)
}

func (e *ExhaustedError) Unwrap() error { return e.Err }

// Retry wraps next so that a failure kvapi.IsRetryable accepts (429, 5xx,
// 408/409, no reply) is sent again, up to p.MaxAttempts tries in all. Other
// failures, among them a server certificate that fails verification, and a
// done context, return at once.
//
// A 429 pauses every request of the account through l.Pause (Retry-After, or
// p.DefaultRetryAfter), because Cloudflare's budget is per account, not per
// request; the retry then waits out that pause. Other failures back off with
// full jitter. Each retry is counted in m's Retries{op,reason} (nil m: not
// counted). l may be nil, in which case Retry sleeps through a 429 itself.
// Values are reopened by the client on every try, so resending is safe.
func Retry(next kvapi.KV, p RetryPolicy, l *Limiter, m *metrics.Metrics, logger *slog.Logger) kvapi.KV {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &retrying{next: next, p: p.withDefaults(), l: l, m: m, log: logger}
}

type retrying struct {
	next kvapi.KV
	p    RetryPolicy
	l    *Limiter
	m    *metrics.Metrics
	log  *slog.Logger
}

var _ kvapi.KV = (*retrying)(nil)

// do runs try until it succeeds, fails permanently, ctx is done, or the
// attempts are used up.
func (r *retrying) do(ctx context.Context, op kvapi.Op, key string, try func() error) error {
	for attempt := 1; ; attempt++ {
		err := try()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !kvapi.IsRetryable(err) {
			return err
		}
		if attempt >= r.p.MaxAttempts {
			return &ExhaustedError{Op: op, Key: key, Attempts: attempt, Err: err}
		}
		if werr := r.waitBeforeRetry(ctx, op, key, attempt, err); werr != nil {
			// The caller asked to stop; keep the last failure visible too.
			return fmt.Errorf("%w; last attempt: %w", werr, err)
		}
	}
}

// waitBeforeRetry counts the coming retry and waits as err demands.
func (r *retrying) waitBeforeRetry(ctx context.Context, op kvapi.Op, key string, attempt int, err error) error {
	if ra, limited := kvapi.IsRateLimited(err); limited {
		if ra <= 0 {
			ra = r.p.DefaultRetryAfter
		}
		r.count(op, metrics.RetryRateLimited)
		r.log.Warn("KV API rate limit hit; pausing every request of the account",
			"op", op, "key", key, "attempt", attempt, "pause", ra, "err", err)
		if r.l == nil {
			return r.p.Sleep(ctx, min(ra, DefaultMaxPause))
		}
		r.l.Pause(ra)
		return r.l.waitPause(ctx)
	}

	reason := metrics.RetryServerError
	var ne *kvapi.NetworkError
	if errors.As(err, &ne) {
		reason = metrics.RetryNetwork
	}
	d := r.p.backoff(attempt)
	var ae *kvapi.APIError
	if errors.As(err, &ae) && ae.RetryAfter > d {
		// A 503 may say when to come back; honour it within the cap.
		d = min(ae.RetryAfter, r.p.MaxDelay)
	}
	r.count(op, reason)
	r.log.Info("KV API request failed; retrying",
		"op", op, "key", key, "attempt", attempt, "reason", reason, "delay", d, "err", err)
	return r.p.Sleep(ctx, d)
}

func (r *retrying) count(op kvapi.Op, reason metrics.RetryReason) {
	if r.m != nil {
		r.m.Retries.WithLabelValues(string(op), string(reason)).Inc()
	}
}

func (r *retrying) PutValue(ctx context.Context, ns, key string, v kvapi.Value, opts kvapi.PutOptions) error {
	return r.do(ctx, kvapi.OpPut, key, func() error {
		return r.next.PutValue(ctx, ns, key, v, opts)
	})
}

func (r *retrying) BulkPut(ctx context.Context, ns string, pairs []kvapi.BulkPair) (res kvapi.BulkResult, err error) {
	err = r.do(ctx, kvapi.OpBulkPut, "", func() error {
		var e error
		res, e = r.next.BulkPut(ctx, ns, pairs)
		return e
	})
	return res, err
}

func (r *retrying) DeleteValue(ctx context.Context, ns, key string) error {
	return r.do(ctx, kvapi.OpDelete, key, func() error {
		return r.next.DeleteValue(ctx, ns, key)
	})
}

func (r *retrying) BulkDelete(ctx context.Context, ns string, keys []string) (res kvapi.BulkResult, err error) {
	err = r.do(ctx, kvapi.OpBulkDelete, "", func() error {
		var e error
		res, e = r.next.BulkDelete(ctx, ns, keys)
		return e
	})
	return res, err
}

func (r *retrying) ListKeys(ctx context.Context, ns string, opts kvapi.ListOptions) (page kvapi.KeyPage, err error) {
	err = r.do(ctx, kvapi.OpList, "", func() error {
		var e error
		page, e = r.next.ListKeys(ctx, ns, opts)
		return e
	})
	return page, err
}

func (r *retrying) GetValue(ctx context.Context, ns, key string) (vi kvapi.ValueInfo, err error) {
	err = r.do(ctx, kvapi.OpGet, key, func() error {
		var e error
		vi, e = r.next.GetValue(ctx, ns, key)
		return e
	})
	return vi, err
}

func (r *retrying) GetMetadata(ctx context.Context, ns, key string) (md json.RawMessage, err error) {
	err = r.do(ctx, kvapi.OpGetMetadata, key, func() error {
		var e error
		md, e = r.next.GetMetadata(ctx, ns, key)
		return e
	})
	return md, err
}
