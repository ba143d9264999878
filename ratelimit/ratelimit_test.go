package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

var (
	err500  = &kvapi.APIError{Op: kvapi.OpPut, StatusCode: 500, Errors: []kvapi.ErrorItem{{Code: 10001, Message: "service unavailable"}}}
	err503  = &kvapi.APIError{Op: kvapi.OpPut, StatusCode: 503, RetryAfter: 3 * time.Second}
	err409  = &kvapi.APIError{Op: kvapi.OpPut, StatusCode: 409}
	err400  = &kvapi.APIError{Op: kvapi.OpPut, StatusCode: 400, Errors: []kvapi.ErrorItem{{Code: 10014, Message: "bad"}}}
	err403  = &kvapi.APIError{Op: kvapi.OpPut, StatusCode: 403, Errors: []kvapi.ErrorItem{{Code: 10000}}}
	errNet  = &kvapi.NetworkError{Op: kvapi.OpPut, Err: errors.New("connection reset by peer")}
	errVal  = &kvapi.ValidationError{Field: "key", Err: kvapi.ErrKeyEmpty}
	err429  = func(ra time.Duration) error { return &kvapi.APIError{Op: kvapi.OpPut, StatusCode: 429, RetryAfter: ra} }
	fastLim = func(m *metrics.Metrics) *Limiter {
		return NewLimiter(LimiterOptions{Rate: rate.Inf, Metrics: m})
	}
)

// sleeps records the injected backoff schedule instead of sleeping.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) Sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func TestRetry(t *testing.T) {
	cases := []struct {
		name      string
		script    []error
		wantErr   error // matched with errors.Is; nil = success
		wantCalls int
		retries   map[string]float64 // reason -> count
		sleeps    []time.Duration
		pauses    float64
		exhausted bool
	}{
		{name: "success", wantCalls: 1},
		{name: "server error then success", script: []error{err500}, wantCalls: 2,
			retries: map[string]float64{"server_error": 1}, sleeps: []time.Duration{250 * time.Millisecond}},
		{name: "conflict is retried as server_error", script: []error{err409}, wantCalls: 2,
			retries: map[string]float64{"server_error": 1}, sleeps: []time.Duration{250 * time.Millisecond}},
		{name: "503 Retry-After honoured within cap", script: []error{err503}, wantCalls: 2,
			retries: map[string]float64{"server_error": 1}, sleeps: []time.Duration{3 * time.Second}},
		{name: "network errors back off exponentially", script: []error{errNet, errNet, errNet}, wantCalls: 4,
			retries: map[string]float64{"network": 3},
			sleeps:  []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}},
		{name: "rate limited with Retry-After", script: []error{err429(30 * time.Millisecond)}, wantCalls: 2,
			retries: map[string]float64{"rate_limited": 1}, pauses: 1},
		{name: "rate limited without Retry-After", script: []error{err429(0)}, wantCalls: 2,
			retries: map[string]float64{"rate_limited": 1}, pauses: 1},
		{name: "bad request is permanent", script: []error{err400}, wantErr: err400, wantCalls: 1},
		{name: "forbidden is permanent", script: []error{err403}, wantErr: err403, wantCalls: 1},
		{name: "validation is permanent", script: []error{errVal}, wantErr: kvapi.ErrKeyEmpty, wantCalls: 1},
		{name: "exhausted", script: []error{err500, errNet, err500, err500, err500, err500, err500}, wantErr: err500, wantCalls: 6,
			retries: map[string]float64{"server_error": 4, "network": 1}, exhausted: true,
			// 0.5 × min(30s, 500ms·2^(n-1)) for n = 1..5
			sleeps: []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}},
	}
	for _, tc := range cases {
		for _, op := range kvapi.Ops {
			t.Run(tc.name+"/"+string(op), func(t *testing.T) {
				reg := prometheus.NewRegistry()
				m := metrics.New(reg, "test")
				lim := fastLim(m)
				fake := &testkit.KV{Script: tc.script}
				sl := &sleeps{}
				kv := Retry(Limit(fake, lim), RetryPolicy{
					Rand: func() float64 { return 0.5 }, Sleep: sl.Sleep, DefaultRetryAfter: 20 * time.Millisecond,
				}, lim, m, nil)
				err := testkit.Call(context.Background(), kv, op)
				if tc.wantErr == nil && err != nil {
					t.Fatalf("err = %v, want success", err)
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				var ex *ExhaustedError
				if got := errors.As(err, &ex); got != tc.exhausted {
					t.Errorf("ExhaustedError = %v, want %v (err %v)", got, tc.exhausted, err)
				} else if got && (ex.Attempts != 6 || ex.Op != op) {
					t.Errorf("ExhaustedError = %+v", ex)
				}
				if tc.exhausted {
					var ae *kvapi.APIError
					if !errors.As(err, &ae) || ae.StatusCode != 500 {
						t.Errorf("errors.As(APIError) through the exhausted error = %v", ae)
					}
				}
				if fake.Calls() != tc.wantCalls {
					t.Errorf("attempts = %d, want %d", fake.Calls(), tc.wantCalls)
				}
				for _, reason := range metrics.RetryReasons {
					got := testutil.ToFloat64(m.Retries.WithLabelValues(string(op), string(reason)))
					if got != tc.retries[string(reason)] {
						t.Errorf("Retries{%s,%s} = %v, want %v", op, reason, got, tc.retries[string(reason)])
					}
				}
				if fmt.Sprint(sl.d) != fmt.Sprint(tc.sleeps) {
					t.Errorf("backoff sleeps = %v, want %v", sl.d, tc.sleeps)
				}
				if got := testutil.ToFloat64(m.RateLimitPauses); got != tc.pauses {
					t.Errorf("RateLimitPauses = %v, want %v", got, tc.pauses)
				}
				if op == kvapi.OpPut {
					for i, b := range fake.Bodies() {
						if b != "payload" {
							t.Errorf("attempt %d sent body %q, want the whole value", i+1, b)
						}
					}
				}
			})
		}
	}
}

func TestBackoffCapAndJitter(t *testing.T) {
	p := RetryPolicy{BaseDelay: time.Second, MaxDelay: 5 * time.Second}.withDefaults()
	for _, tc := range []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{1, 0, 0},
		{1, 0.999, 999 * time.Millisecond},
		{3, 0.5, 2 * time.Second},
		{4, 0.5, 2500 * time.Millisecond}, // 8s capped at 5s
		{40, 0.5, 2500 * time.Millisecond},
		{200, 0.999, 4995 * time.Millisecond}, // no overflow on huge attempts
	} {
		p.Rand = func() float64 { return tc.r }
		if got := p.backoff(tc.attempt); got != tc.want {
			t.Errorf("backoff(%d) with rand %v = %v, want %v", tc.attempt, tc.r, got, tc.want)
		}
	}
	d := RetryPolicy{}.withDefaults()
	if d.MaxAttempts != 6 || d.BaseDelay != 500*time.Millisecond || d.MaxDelay != 30*time.Second || d.DefaultRetryAfter != time.Minute {
		t.Errorf("defaults = %+v", d)
	}
}

func TestRetryRateLimitedPausesForRetryAfter(t *testing.T) {
	lim := NewLimiter(LimiterOptions{Rate: rate.Inf})
	fake := &testkit.KV{Script: []error{err429(80 * time.Millisecond)}}
	kv := Retry(Limit(fake, lim), RetryPolicy{Sleep: (&sleeps{}).Sleep}, lim, nil, nil)
	if err := testkit.Call(context.Background(), kv, kvapi.OpDelete); err != nil {
		t.Fatal(err)
	}
	if len(fake.Times()) != 2 {
		t.Fatalf("calls = %d", len(fake.Times()))
	}
	// A lower bound only: the retry may not come before the pause ends.
	if gap := fake.Times()[1].Sub(fake.Times()[0]); gap < 80*time.Millisecond {
		t.Errorf("retried %v after the 429, before its Retry-After of 80ms", gap)
	}
}

func TestRetryWithoutLimiterSleepsThrough429(t *testing.T) {
	fake := &testkit.KV{Script: []error{err429(7 * time.Second)}}
	sl := &sleeps{}
	kv := Retry(fake, RetryPolicy{Sleep: sl.Sleep}, nil, nil, nil)
	if err := testkit.Call(context.Background(), kv, kvapi.OpGet); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(sl.d) != "[7s]" {
		t.Errorf("sleeps = %v, want [7s]", sl.d)
	}
}

// TestRateLimitPausesOtherGoroutines: a 429 seen by one request holds a
// request another goroutine starts meanwhile until the pause is over.
func TestRateLimitPausesOtherGoroutines(t *testing.T) {
	const pause = 150 * time.Millisecond
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	lim := NewLimiter(LimiterOptions{Rate: rate.Inf, Metrics: m})
	policy := RetryPolicy{Sleep: (&sleeps{}).Sleep}

	first := &testkit.KV{Script: []error{err429(pause)}}
	other := &testkit.KV{}
	kvA := Retry(Limit(first, lim), policy, lim, m, nil)
	kvB := Retry(Limit(other, lim), policy, lim, m, nil)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := testkit.Call(context.Background(), kvA, kvapi.OpPut); err != nil {
			t.Errorf("A: %v", err)
		}
	}()
	// Start B once A's 429 has paused the limiter.
	deadline := time.Now().Add(30 * time.Second)
	var until time.Time
	for until = lim.PausedUntil(); until.IsZero(); until = lim.PausedUntil() {
		if time.Now().After(deadline) {
			t.Fatal("A's 429 never paused the limiter")
		}
		time.Sleep(time.Millisecond)
	}
	if err := testkit.Call(context.Background(), kvB, kvapi.OpGet); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(other.Times()) != 1 {
		t.Fatalf("B calls = %d", len(other.Times()))
	}
	if other.Times()[0].Before(until) {
		t.Errorf("B's request went out at %v, before the pause ended at %v", other.Times()[0], until)
	}
	if first.Calls() != 2 {
		t.Errorf("A attempts = %d, want 2", first.Calls())
	}
	if got := testutil.ToFloat64(m.RateLimitPauses); got != 1 {
		t.Errorf("RateLimitPauses = %v, want 1", got)
	}
	// B waited in the limiter, and that wait was observed.
	if n := testutil.CollectAndCount(m.RateLimitWait); n != 1 {
		t.Errorf("RateLimitWait series = %d", n)
	}
}

func TestContextCancelDuringBackoff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	fake := &testkit.KV{Script: []error{err500, err500, err500}}
	var slept atomic.Int32
	kv := Retry(fake, RetryPolicy{Sleep: func(ctx context.Context, d time.Duration) error {
		slept.Add(1)
		cancel() // the caller gives up while we back off
		<-ctx.Done()
		return ctx.Err()
	}}, nil, nil, nil)
	err := testkit.Call(ctx, kv, kvapi.OpBulkPut)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !errors.Is(err, err500) {
		t.Errorf("err = %v, want the last failure kept", err)
	}
	if kvapi.IsRetryable(err) {
		t.Error("a cancelled request reported as retryable")
	}
	if fake.Calls() != 1 || slept.Load() != 1 {
		t.Errorf("calls = %d, sleeps = %d; want 1 and 1", fake.Calls(), slept.Load())
	}
}

func TestContextCancelDuringPause(t *testing.T) {
	lim := NewLimiter(LimiterOptions{Rate: rate.Inf})
	ctx, cancel := context.WithCancel(context.Background())
	fake := &testkit.KV{Script: []error{err429(time.Hour)}}
	kv := Retry(Limit(fake, lim), RetryPolicy{}, lim, nil, nil)
	done := make(chan error, 1)
	go func() { done <- testkit.Call(ctx, kv, kvapi.OpPut) }()
	for lim.PausedUntil().IsZero() {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled request stayed in a 429 pause")
	}
	if fake.Calls() != 1 {
		t.Errorf("calls = %d, want 1", fake.Calls())
	}
}

func TestContextAlreadyDone(t *testing.T) {
	lim := NewLimiter(LimiterOptions{})
	fake := &testkit.KV{}
	kv := Retry(Limit(fake, lim), RetryPolicy{}, lim, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := testkit.Call(ctx, kv, kvapi.OpList); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if fake.Calls() != 0 {
		t.Errorf("a request went out on a done context")
	}
}

func TestDefaultRate(t *testing.T) {
	r, burst := DefaultRate()
	budget := float64(r)*300 + float64(burst)
	// Cloudflare: 1,200 per 5 minutes per token; keep 100 for other users.
	if budget > 1100 {
		t.Errorf("rate×300 + burst = %v, over 1,100", budget)
	}
	if budget < 1000 || burst < 1 {
		t.Errorf("rate %v burst %d wastes the budget (%v)", r, burst, budget)
	}
	l := NewLimiter(LimiterOptions{})
	if l.bucket.Limit() != r || l.bucket.Burst() != burst {
		t.Errorf("zero options give rate %v burst %d, want the defaults", l.bucket.Limit(), l.bucket.Burst())
	}
	if l.maxPause != 6*time.Minute {
		t.Errorf("default MaxPause = %v", l.maxPause)
	}
}

// TestBucketBudgetOverFiveMinutes drives the bucket with a simulated clock
// and checks that no 300 s window ever admits more than 1,100 requests.
func TestBucketBudgetOverFiveMinutes(t *testing.T) {
	r, burst := DefaultRate()
	b := rate.NewLimiter(r, burst)
	start := time.Unix(1_700_000_000, 0)
	var admitted []time.Time
	for ms := 0; ms < 20*60*1000; ms += 50 {
		now := start.Add(time.Duration(ms) * time.Millisecond)
		for b.AllowN(now, 1) {
			admitted = append(admitted, now)
		}
	}
	lo := 0
	for hi := range admitted {
		for admitted[hi].Sub(admitted[lo]) >= 300*time.Second {
			lo++
		}
		if n := hi - lo + 1; n > 1100 {
			t.Fatalf("%d requests within 300s ending at %v", n, admitted[hi].Sub(start))
		}
	}
	if len(admitted) < 4000 {
		t.Errorf("only %d requests in 20 minutes", len(admitted))
	}
}

func TestPauseExtendsNeverShortens(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	l := NewLimiter(LimiterOptions{Rate: rate.Inf, MaxPause: 6 * time.Minute, Now: func() time.Time { return now }, Metrics: m})
	steps := []struct {
		pause time.Duration
		want  time.Duration // PausedUntil - now
	}{
		{0, -1}, // no pause: zero time
		{10 * time.Second, 10 * time.Second},
		{5 * time.Second, 10 * time.Second},
		{-time.Second, 10 * time.Second},
		{20 * time.Second, 20 * time.Second},
		{time.Hour, 6 * time.Minute},
		{7 * time.Minute, 6 * time.Minute},
	}
	for i, s := range steps {
		l.Pause(s.pause)
		got := l.PausedUntil()
		if s.want < 0 {
			if !got.IsZero() {
				t.Errorf("step %d: PausedUntil = %v, want none", i, got)
			}
			continue
		}
		if d := got.Sub(now); d != s.want {
			t.Errorf("step %d: Pause(%v) -> paused for %v, want %v", i, s.pause, d, s.want)
		}
	}
	if got := testutil.ToFloat64(m.RateLimitPauses); got != 3 {
		t.Errorf("RateLimitPauses = %v, want 3 (only extensions count)", got)
	}
}

func TestPauseBlocksWait(t *testing.T) {
	l := NewLimiter(LimiterOptions{Rate: rate.Inf})
	const d = 100 * time.Millisecond
	start := time.Now()
	l.Pause(d)
	var wg sync.WaitGroup
	var early atomic.Int32
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Wait(context.Background()); err != nil {
				t.Error(err)
			}
			if time.Since(start) < d {
				early.Add(1)
			}
		}()
	}
	wg.Wait()
	if early.Load() != 0 {
		t.Errorf("%d Waits returned before the pause ended", early.Load())
	}
}

func TestLimitOneTokenPerRequest(t *testing.T) {
	for _, op := range kvapi.Ops {
		t.Run(string(op), func(t *testing.T) {
			// Three tokens, then none for an hour.
			l := NewLimiter(LimiterOptions{Rate: rate.Every(time.Hour), Burst: 3})
			fake := &testkit.KV{}
			kv := Limit(fake, l)
			for i := range 3 {
				if err := testkit.Call(context.Background(), kv, op); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if err := testkit.Call(ctx, kv, op); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("fourth call = %v, want to wait for a token until the deadline", err)
			}
			if fake.Calls() != 3 {
				t.Errorf("requests sent = %d, want 3", fake.Calls())
			}
		})
	}
}

func TestLimitEachListPageTakesAToken(t *testing.T) {
	l := NewLimiter(LimiterOptions{Rate: rate.Every(time.Hour), Burst: 3})
	// Three pages, the middle one empty: it still costs a request.
	fake := &testkit.KV{Pages: []kvapi.KeyPage{{Keys: []kvapi.KeyInfo{{Name: "a"}}}, {}, {Keys: []kvapi.KeyInfo{{Name: "b"}}}}}
	var keys []string
	err := kvapi.ListAll(context.Background(), Limit(fake, l), "ns", "", func(k kvapi.KeyInfo) error {
		keys = append(keys, k.Name)
		return nil
	})
	if err != nil || strings.Join(keys, ",") != "a,b" {
		t.Fatalf("ListAll = %v, %v", keys, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a token was left after three pages: %v", err)
	}
}

// TestCancelledWaitReturnsToken: a request that gives up while waiting for
// a token does not spend it.
func TestCancelledWaitReturnsToken(t *testing.T) {
	l := NewLimiter(LimiterOptions{Rate: rate.Every(100 * time.Millisecond), Burst: 1})
	if err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); err == nil {
		t.Fatal("second Wait got a token at once")
	}
	if tokens := l.bucket.TokensAt(time.Now().Add(100 * time.Millisecond)); tokens < 0.9 {
		t.Errorf("tokens after the cancelled wait = %v, want the reservation returned", tokens)
	}
}

func TestRateLimitWaitObserved(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	l := NewLimiter(LimiterOptions{Rate: rate.Inf, Metrics: m})
	for range 3 {
		if err := l.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kvsync_rate_limiter_wait_seconds" {
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 3 {
				t.Errorf("wait samples = %d, want 3", c)
			}
			return
		}
	}
	t.Error("kvsync_rate_limiter_wait_seconds not gathered")
}
