package emulator

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Limits on buffered request bodies. A write request is read whole into
// memory before it is validated and applied (a bulk body up to
// MaxBulkRequestBytes, a value up to MaxValueBytes), so without a bound a
// handful of concurrent requests could take gigabytes.
const (
	// MaxBufferedBodyBytes bounds the bytes of write bodies held at once:
	// two of the largest bulk requests, or eight 25 MiB values.
	MaxBufferedBodyBytes = 2 * MaxBulkRequestBytes
	// BodyQueueTimeout is how long a write waits for room before it is
	// answered 503, code 10001, with Retry-After.
	BodyQueueTimeout = 30 * time.Second
)

// bodyGate is a weighted semaphore over buffered body bytes. A request
// reserves its declared Content-Length, or the most it may send when the
// length is unknown (chunked), before reading its body.
//
// A request over the bound waits (for at most BodyQueueTimeout, or until its
// context ends) rather than being refused at once: Cloudflare does not refuse
// concurrent writes, so a client within the API's limits (kvsync at its
// concurrency, wrangler) should get the answers it would get there, only
// later. A 429 would be worse than slow: kvsync reads it as the account's
// budget and pauses every request. A request still waiting after the
// timeout gets the 503 Cloudflare answers for transient trouble, which
// clients retry. Only authenticated requests reach the gate.
type bodyGate struct {
	sem      *semaphore.Weighted
	capacity int64
	timeout  time.Duration
	// waiting counts requests queued at the gate and reserved the bytes
	// held; tests watch them.
	waiting, reserved atomic.Int64
}

func newBodyGate(capacity int64, timeout time.Duration) *bodyGate {
	return &bodyGate{sem: semaphore.NewWeighted(capacity), capacity: capacity, timeout: timeout}
}

// reserve is the weight of a body of at most max bytes: its declared
// length when it declares one within max, else max.
func reserve(r *http.Request, max int64) int64 {
	if r.ContentLength >= 0 && r.ContentLength <= max {
		return r.ContentLength
	}
	return max
}

// acquire reserves n bytes for the request's body, waiting while others
// hold the room. The caller calls release once the body is no longer held.
func (g *bodyGate) acquire(r *http.Request, n int64) (release func(), aerr *apiError) {
	n = min(max(n, 1), g.capacity)
	if !g.sem.TryAcquire(n) {
		g.waiting.Add(1)
		defer g.waiting.Add(-1)
		ctx, cancel := context.WithTimeout(r.Context(), g.timeout)
		defer cancel()
		if err := g.sem.Acquire(ctx, n); err != nil {
			msg := "service temporarily unavailable: too many large requests in progress"
			if !errors.Is(err, context.DeadlineExceeded) {
				// The request ended: client gone, or the server shutting down.
				msg = "request ended while waiting for room: " + err.Error()
			}
			return nil, &apiError{status: http.StatusServiceUnavailable, code: 10001, msg: msg, retryAfter: "1", unreadBody: true}
		}
	}
	g.reserved.Add(n)
	return func() { g.reserved.Add(-n); g.sem.Release(n) }, nil
}
