package ratelimit

import (
	"log/slog"
	"time"

	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// ChainOptions configure Chain.
type ChainOptions struct {
	// Limiter is the account's token bucket and 429 pause. Cloudflare's
	// budget is per account, so every chain of one account must share one
	// Limiter. nil means a Limiter of the chain's own, with the default
	// budget (NewLimiter(LimiterOptions{Metrics: Metrics})).
	Limiter *Limiter
	// Policy says how often and how patiently a failed request is retried;
	// zero fields take the defaults (see RetryPolicy).
	Policy RetryPolicy
	// Metrics counts requests, API errors, retries and limiter waits; nil
	// counts nothing.
	Metrics *metrics.Metrics
	// Log receives a line per retry; nil discards them.
	Log *slog.Logger
	// Now is the clock of the request durations; nil means time.Now.
	Now func() time.Time
}

// Chain wraps client in kvsync's decorators, outermost first:
//
//	Retry(Limit(metrics.Instrument(client)))
//
// The order is what makes each of them true:
//
//   - Instrument is innermost, so it sees exactly the attempts that reach
//     the API: every retry is counted with its own status, and a request's
//     duration is the API's time, not time spent waiting for a token or
//     backing off.
//   - Limit is inside Retry, so every attempt, retries included, takes a
//     token: Cloudflare counts each request against the budget, not each
//     call of the engine.
//   - Retry is outermost, so its backoff and its wait for a 429 pause hold
//     no token, and the caller sees one result per call (ExhaustedError
//     when the attempts run out).
func Chain(client kvapi.KV, o ChainOptions) kvapi.KV {
	lim := o.Limiter
	if lim == nil {
		lim = NewLimiter(LimiterOptions{Metrics: o.Metrics})
	}
	return Retry(Limit(metrics.Instrument(client, o.Metrics, o.Now), lim), o.Policy, lim, o.Metrics, o.Log)
}
