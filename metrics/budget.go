package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LimiterState is what the budget gauges read at each scrape: the account's
// token bucket and its pause after a 429 (ratelimit.Limiter).
type LimiterState interface {
	// Tokens is what the bucket holds now: +Inf when it is disabled,
	// below 0 while requests wait for tokens already promised to them.
	Tokens() float64
	// PausedUntil is the end of the pause in force, or a time in the past
	// (the zero time when there never was one).
	PausedUntil() time.Time
	// Now is the limiter's clock, which tells whether the pause is over.
	Now() time.Time
}

// WatchLimiter makes kvsync_rate_limit_tokens and
// kvsync_rate_limit_paused_until_timestamp_seconds read l. Every sync of an
// account shares one limiter, so there is one to watch; a second call
// replaces the first. Until a limiter is watched neither series is exported.
func (m *Metrics) WatchLimiter(l LimiterState) {
	if m == nil || l == nil {
		return
	}
	m.limiter.src.Store(&l)
}

// limiterCollector reads the limiter at scrape time: the bucket refills
// between requests, and a pause ends by itself, so a gauge set when a request
// passes would be stale exactly when an operator looks at an idle daemon.
type limiterCollector struct {
	src    atomic.Pointer[LimiterState]
	tokens *prometheus.Desc
	paused *prometheus.Desc
}

func newLimiterCollector() *limiterCollector {
	return &limiterCollector{
		tokens: prometheus.NewDesc("kvsync_rate_limit_tokens",
			"Requests the account's token bucket admits now without waiting (+Inf when the bucket is disabled, below 0 while requests wait for tokens promised to them).", nil, nil),
		paused: prometheus.NewDesc("kvsync_rate_limit_paused_until_timestamp_seconds",
			"When the pause of every request after a 429 ends (Unix time); 0 when no pause is in force.", nil, nil),
	}
}

func (c *limiterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tokens
	ch <- c.paused
}

func (c *limiterCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.src.Load()
	if p == nil {
		return
	}
	l := *p
	ch <- prometheus.MustNewConstMetric(c.tokens, prometheus.GaugeValue, l.Tokens())
	var until float64
	if u := l.PausedUntil(); u.After(l.Now()) {
		until = float64(u.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, until)
}
