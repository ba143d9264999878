package ratelimit

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/kvsync/kvsync/metrics"
)

// gauge reads the one series of the gauge family name from reg; ok is false
// when reg exports none.
func gauge(t *testing.T, reg *prometheus.Registry, name string) (v float64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			if n := len(mf.GetMetric()); n != 1 {
				t.Fatalf("%s has %d series, want 1", name, n)
			}
			return mf.GetMetric()[0].GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// TestBudgetGauges scripts a limiter on a fake clock through requests, a
// refill, a 429 pause and its end, and reads kvsync_rate_limit_tokens and
// kvsync_rate_limit_paused_until_timestamp_seconds after each step, as a
// scrape would.
func TestBudgetGauges(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	l := NewLimiter(LimiterOptions{Rate: 1, Burst: 5, MaxPause: time.Minute, Now: clock, Metrics: m})
	wait := func(n int) func() {
		return func() {
			for range n {
				if err := l.Wait(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, s := range []struct {
		name   string
		do     func()
		tokens float64
		paused float64 // Unix seconds; 0 when no pause is in force
		pauses float64 // kvsync_rate_limit_pauses_total
	}{
		{"a fresh bucket is full", func() {}, 5, 0, 0},
		{"three requests take three tokens", wait(3), 2, 0, 0},
		{"1.5 s refill 1.5 tokens", func() { advance(1500 * time.Millisecond) }, 3.5, 0, 0},
		{"a 429 pauses every request for 30 s", func() { l.Pause(30 * time.Second) }, 3.5, 1_800_000_031.5, 1},
		{"a shorter Retry-After leaves the pause as it is", func() { l.Pause(10 * time.Second) }, 3.5, 1_800_000_031.5, 1},
		{"10 s into the pause it still holds", func() { advance(10 * time.Second) }, 5, 1_800_000_031.5, 1},
		{"a longer one extends it", func() { l.Pause(40 * time.Second) }, 5, 1_800_000_051.5, 2},
		{"once it is over the gauge reads 0", func() { advance(40 * time.Second) }, 5, 0, 2},
		{"five requests empty the bucket", wait(5), 0, 0, 2},
	} {
		s.do()
		if got, ok := gauge(t, reg, "kvsync_rate_limit_tokens"); !ok || math.Abs(got-s.tokens) > 1e-9 {
			t.Errorf("%s: kvsync_rate_limit_tokens = %v (exported %v), want %v", s.name, got, ok, s.tokens)
		}
		if got, ok := gauge(t, reg, "kvsync_rate_limit_paused_until_timestamp_seconds"); !ok || got != s.paused {
			t.Errorf("%s: kvsync_rate_limit_paused_until_timestamp_seconds = %v (exported %v), want %v", s.name, got, ok, s.paused)
		}
		if got := testutil.ToFloat64(m.RateLimitPauses); got != s.pauses {
			t.Errorf("%s: kvsync_rate_limit_pauses_total = %v, want %v", s.name, got, s.pauses)
		}
	}
}

// TestBudgetGaugeDisabledBucket: with the bucket off (rate.Inf) there is no
// budget to count down; the gauge says so with +Inf rather than the bucket's
// burst, which rate.Limiter reads then and which looks nearly spent.
func TestBudgetGaugeDisabledBucket(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	reg := prometheus.NewRegistry()
	l := NewLimiter(LimiterOptions{Rate: rate.Inf, Now: func() time.Time { return now }, Metrics: metrics.New(reg, "test")})
	if err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, ok := gauge(t, reg, "kvsync_rate_limit_tokens"); !ok || !math.IsInf(got, 1) {
		t.Errorf("kvsync_rate_limit_tokens = %v (exported %v), want +Inf", got, ok)
	}
}
