// Package ratelimit keeps kvsync inside Cloudflare's API budget and rides out
// transient failures. It provides two decorators over kvapi.KV: Limit takes a
// token from the account's shared bucket before every request, and Retry
// sends retryable failures again with backoff, pausing every request of the
// account after a 429. Chain stacks them over metrics.Instrument in the one
// order that makes every real attempt take a token and be counted; cmd
// builds its client with it.
package ratelimit

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// DefaultMaxPause caps a 429 pause. Cloudflare blocks an account for a
// kvapi.BudgetWindow when it exceeds its budget; a Retry-After beyond that
// plus a minute of slack is treated as bogus rather than obeyed.
const DefaultMaxPause = kvapi.BudgetWindow + time.Minute

// defaultHeadroom is what kvsync leaves of kvapi.AccountBudget to the token's
// other users, like wrangler; defaultBurst is the bucket's size.
const (
	defaultHeadroom = 100
	defaultBurst    = 100
)

// DefaultRate is the account's request budget as a token bucket. A bucket
// admits at most rate×window + burst requests in any window, so the default
// spends kvapi.AccountBudget less defaultHeadroom: a steady rate that, with
// the burst after an idle spell, adds up to that in every kvapi.BudgetWindow.
func DefaultRate() (rate.Limit, int) {
	steady := kvapi.AccountBudget - defaultHeadroom - defaultBurst
	return rate.Limit(float64(steady) / kvapi.BudgetWindow.Seconds()), defaultBurst
}

// LimiterOptions configure NewLimiter.
type LimiterOptions struct {
	// Rate is the steady request rate; 0 means DefaultRate, rate.Inf disables
	// the bucket (a 429 pause still applies).
	Rate rate.Limit
	// Burst is the bucket size; values below 1 mean 1 (DefaultRate's burst
	// when Rate is 0).
	Burst int
	// MaxPause caps a 429 pause; 0 means DefaultMaxPause.
	MaxPause time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Metrics, if not nil, observes RateLimitWait and RateLimitPauses, and
	// its budget gauges read this limiter (Metrics.WatchLimiter).
	Metrics *metrics.Metrics
}

// Limiter is one token bucket per account, shared by every request of every
// sync, plus a global pause after a 429. It is safe for concurrent use.
type Limiter struct {
	bucket   *rate.Limiter
	maxPause time.Duration
	now      func() time.Time
	m        *metrics.Metrics

	mu    sync.Mutex
	until time.Time // no request starts before this
}

// NewLimiter builds a Limiter; see LimiterOptions for the defaults.
func NewLimiter(o LimiterOptions) *Limiter {
	if o.Rate == 0 {
		o.Rate, o.Burst = DefaultRate()
	}
	if o.Burst < 1 {
		o.Burst = 1
	}
	if o.MaxPause <= 0 {
		o.MaxPause = DefaultMaxPause
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Limiter{
		bucket:   rate.NewLimiter(o.Rate, o.Burst),
		maxPause: o.MaxPause,
		now:      o.Now,
		m:        o.Metrics,
	}
	o.Metrics.WatchLimiter(l)
	return l
}

// Tokens is how many requests the bucket admits now without waiting: +Inf
// when it is disabled, below 0 while requests wait for tokens already
// promised to them.
func (l *Limiter) Tokens() float64 {
	if l.bucket.Limit() == rate.Inf {
		// No budget is counted then; rate.Limiter would read its burst,
		// which looks like a nearly spent bucket.
		return math.Inf(1)
	}
	return l.bucket.TokensAt(l.now())
}

// Now is the limiter's clock.
func (l *Limiter) Now() time.Time { return l.now() }

// Wait blocks until any pause is over and a token is available, or ctx is
// done. The time spent is observed in RateLimitWait.
func (l *Limiter) Wait(ctx context.Context) error {
	start := l.now()
	err := l.wait(ctx)
	if l.m != nil {
		l.m.RateLimitWait.Observe(l.now().Sub(start).Seconds())
	}
	return err
}

func (l *Limiter) wait(ctx context.Context) error {
	if err := l.waitPause(ctx); err != nil {
		return err
	}
	now := l.now()
	r := l.bucket.ReserveN(now, 1)
	if !r.OK() {
		return errors.New("ratelimit: limiter allows no requests")
	}
	if d := r.DelayFrom(now); d > 0 {
		if err := sleep(ctx, d); err != nil {
			// Give the token back so the budget is not lost to cancellations.
			r.CancelAt(l.now())
			return err
		}
	}
	// A 429 seen by another request while this one waited for its token
	// holds this one too.
	return l.waitPause(ctx)
}

// waitPause blocks until no pause is in force. It takes no token, so Retry
// can wait out a pause without spending budget.
func (l *Limiter) waitPause(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		d := l.PausedUntil().Sub(l.now())
		if d <= 0 {
			return nil
		}
		// Loop: the pause may have been extended meanwhile.
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Pause makes every Wait block until now+min(d, MaxPause). It extends, and
// never shortens, a pause in force; RateLimitPauses counts the calls that
// extended it.
func (l *Limiter) Pause(d time.Duration) {
	if d <= 0 {
		return
	}
	d = min(d, l.maxPause)
	until := l.now().Add(d)
	l.mu.Lock()
	extended := until.After(l.until)
	if extended {
		l.until = until
	}
	l.mu.Unlock()
	if extended && l.m != nil {
		l.m.RateLimitPauses.Inc()
	}
}

// PausedUntil is the end of the pause in force, or a time in the past (the
// zero time when there never was one).
func (l *Limiter) PausedUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
