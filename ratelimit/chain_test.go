package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// TestChainOrder: through Chain, a request that fails once with a 500 is
// sent twice; both attempts take a token and are counted with their own
// status, and the retry is counted once. That is only true in the order
// Retry(Limit(Instrument(client))).
func TestChainOrder(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	// Two tokens, then none for an hour.
	lim := NewLimiter(LimiterOptions{Rate: rate.Every(time.Hour), Burst: 2, Metrics: m})
	fake := &testkit.KV{Script: []error{err500}}
	kv := Chain(fake, ChainOptions{Limiter: lim, Policy: RetryPolicy{Sleep: (&sleeps{}).Sleep}, Metrics: m})

	if err := kv.DeleteValue(context.Background(), "ns", "k"); err != nil {
		t.Fatal(err)
	}
	if fake.Calls() != 2 {
		t.Fatalf("attempts = %d, want 2", fake.Calls())
	}
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"requests{delete,500}", m.APIRequests.WithLabelValues("delete", "500"), 1},
		{"requests{delete,200}", m.APIRequests.WithLabelValues("delete", "200"), 1},
		{"retries{delete,server_error}", m.Retries.WithLabelValues("delete", "server_error"), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := lim.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a token was left after two attempts: %v", err)
	}
}

// TestChainOwnLimiter: without a Limiter, the chain still limits and pauses
// (with the default budget), and nil Metrics and Log are allowed.
func TestChainOwnLimiter(t *testing.T) {
	fake := &testkit.KV{Script: []error{err429(time.Millisecond)}}
	kv := Chain(fake, ChainOptions{})
	if err := kv.DeleteValue(context.Background(), "ns", "k"); err != nil {
		t.Fatal(err)
	}
	if fake.Calls() != 2 {
		t.Errorf("attempts = %d, want 2", fake.Calls())
	}
}

// okKV answers every request with success at no cost of its own, so a
// benchmark through it times only the decorators.
type okKV struct{}

func (okKV) PutValue(context.Context, string, string, kvapi.Value, kvapi.PutOptions) error {
	return nil
}
func (okKV) BulkPut(context.Context, string, []kvapi.BulkPair) (kvapi.BulkResult, error) {
	return kvapi.BulkResult{}, nil
}
func (okKV) DeleteValue(context.Context, string, string) error { return nil }
func (okKV) BulkDelete(context.Context, string, []string) (kvapi.BulkResult, error) {
	return kvapi.BulkResult{}, nil
}
func (okKV) ListKeys(context.Context, string, kvapi.ListOptions) (kvapi.KeyPage, error) {
	return kvapi.KeyPage{}, nil
}
func (okKV) GetValue(context.Context, string, string) (kvapi.ValueInfo, error) {
	return kvapi.ValueInfo{}, nil
}
func (okKV) GetMetadata(context.Context, string, string) (json.RawMessage, error) { return nil, nil }

// BenchmarkChain measures the decorators' own cost per request on the
// success path, built by Chain as cmd builds it, with the bucket disabled.
// The client underneath does nothing, so the figure is the chain's alone.
func BenchmarkChain(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry(), "bench")
	lim := NewLimiter(LimiterOptions{Rate: rate.Inf, Metrics: m})
	kv := Chain(okKV{}, ChainOptions{Limiter: lim, Metrics: m})
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := kv.DeleteValue(ctx, "ns", "k"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
