package metrics

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/desired"
)

// describing records what is registered through it, so a test knows every
// family New registers without relying on which ones a Gather shows.
type describing struct {
	prometheus.Registerer
	descs int
}

func (d *describing) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for range ch {
			d.descs++
		}
	}
	d.Registerer.MustRegister(cs...)
}

// fakeLimiter is a LimiterState with fixed readings.
type fakeLimiter struct {
	tokens     float64
	until, now time.Time
}

func (f fakeLimiter) Tokens() float64        { return f.tokens }
func (f fakeLimiter) PausedUntil() time.Time { return f.until }
func (f fakeLimiter) Now() time.Time         { return f.now }

// everySeries builds the metrics of a daemon with one sync and a limiter,
// with every family holding at least one series, and says how many families
// New registered.
func everySeries(t *testing.T) (*prometheus.Registry, int) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d := &describing{Registerer: reg}
	m := New(d, "v1.2.3")
	m.Sync("site")
	m.WatchLimiter(fakeLimiter{tokens: 3})
	// Label sets New does not start at zero.
	m.APIErrors.WithLabelValues("put", "10001").Inc()
	m.RateLimitWait.Observe(0.1)
	// The election's series, registered beside these when
	// leader_election is on.
	NewLeader(d, time.Now).Lead("site")
	return reg, d.descs
}

// TestSyncSeries: what one sync counts lands in its own series, with its
// sync label, and in no other sync's.
func TestSyncSeries(t *testing.T) {
	for _, tc := range []struct {
		name   string
		count  func(s *Sync)
		series func(m *Metrics, sync string) prometheus.Collector
		want   float64
	}{
		{"kvsync_uploads_total", func(s *Sync) { s.Upload(UploadSuccess, 10); s.Upload(UploadSuccess, 0) },
			func(m *Metrics, sync string) prometheus.Collector { return m.Uploads.WithLabelValues(sync, "success") }, 2},
		{"kvsync_upload_bytes_total", func(s *Sync) { s.Upload(UploadSuccess, 10); s.Upload(UploadFailed, 7) },
			func(m *Metrics, sync string) prometheus.Collector {
				return m.UploadBytes.WithLabelValues(sync, "success")
			}, 10},
		{"kvsync_deletes_total", func(s *Sync) { s.Delete(DeleteKept, 3) },
			func(m *Metrics, sync string) prometheus.Collector { return m.Deletes.WithLabelValues(sync, "kept") }, 3},
		{"kvsync_files_skipped_total", func(s *Sync) { s.Skip(SkipMetadata); s.Skip(SkipMetadata); s.Skip(SkipDebris) },
			func(m *Metrics, sync string) prometheus.Collector {
				return m.FilesSkipped.WithLabelValues(sync, "bad_metadata")
			}, 2},
		{"kvsync_drift_keys_total", func(s *Sync) { s.Drift(DriftMissing, 4) },
			func(m *Metrics, sync string) prometheus.Collector {
				return m.DriftKeys.WithLabelValues(sync, "missing")
			}, 4},
		{"kvsync_state_store_errors_total", func(s *Sync) { s.StoreError(StoreIntent) },
			func(m *Metrics, sync string) prometheus.Collector {
				return m.StoreErrors.WithLabelValues(sync, "intent")
			}, 1},
		{"kvsync_full_syncs_total", func(s *Sync) { s.FullSyncs.WithLabelValues(string(desired.TriggerPeriodic)).Inc() },
			func(m *Metrics, sync string) prometheus.Collector {
				return m.FullSyncs.WithLabelValues(sync, "periodic")
			}, 1},
		{"kvsync_watcher_overflows_total", func(s *Sync) { s.WatcherOverflow.Inc() },
			func(m *Metrics, sync string) prometheus.Collector { return m.WatcherOverflow.WithLabelValues(sync) }, 1},
		{"kvsync_queue_depth", func(s *Sync) { s.QueueDepth.Set(5) },
			func(m *Metrics, sync string) prometheus.Collector { return m.QueueDepth.WithLabelValues(sync) }, 5},
		{"kvsync_inflight_uploads", func(s *Sync) { s.InflightUploads.Set(2) },
			func(m *Metrics, sync string) prometheus.Collector { return m.InflightUploads.WithLabelValues(sync) }, 2},
		{"kvsync_files_held_back", func(s *Sync) { s.HeldBack.Set(1) },
			func(m *Metrics, sync string) prometheus.Collector { return m.HeldBack.WithLabelValues(sync) }, 1},
		{"kvsync_watched_directories", func(s *Sync) { s.Watches.Add(4); s.Watches.Add(-1) },
			func(m *Metrics, sync string) prometheus.Collector { return m.Watches.WithLabelValues(sync) }, 3},
		{"kvsync_unwatched_directories", func(s *Sync) { s.Unwatched.Add(2) },
			func(m *Metrics, sync string) prometheus.Collector { return m.Unwatched.WithLabelValues(sync) }, 2},
		{"kvsync_last_successful_sync_timestamp_seconds", func(s *Sync) { s.LastSuccess.Set(1.8e9) },
			func(m *Metrics, sync string) prometheus.Collector { return m.LastSuccess.WithLabelValues(sync) }, 1.8e9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(prometheus.NewRegistry(), "test")
			a, b := m.Sync("a"), m.Sync("b")
			if a.Name() != "a" || b.Name() != "b" {
				t.Fatalf("names %q %q", a.Name(), b.Name())
			}
			tc.count(a)
			if got := testutil.ToFloat64(tc.series(m, "a")); got != tc.want {
				t.Errorf("%s{sync=\"a\"} = %v, want %v", tc.name, got, tc.want)
			}
			if got := testutil.ToFloat64(tc.series(m, "b")); got != 0 {
				t.Errorf("%s{sync=\"b\"} = %v, want 0: a's counts leaked into b", tc.name, got)
			}
			// A second handle for the same name (a sync a reload
			// restarted) counts on into the same series.
			tc.count(m.Sync("a"))
			if got := testutil.ToFloat64(tc.series(m, "a")); got == 0 {
				t.Errorf("%s{sync=\"a\"} = 0 after counting through a second handle", tc.name)
			}
		})
	}
}

// TestSyncStartsAtZero: every label set of a sync is exported from the
// start, so rate() and increase() see the first event.
func TestSyncStartsAtZero(t *testing.T) {
	m := New(prometheus.NewRegistry(), "test")
	m.Sync("a")
	for _, tc := range []struct {
		c    prometheus.Collector
		want int
	}{
		{m.Uploads, len(UploadResults)},
		{m.UploadBytes, len(UploadResults)},
		{m.Deletes, len(DeleteResults)},
		{m.FilesSkipped, len(SkipReasons)},
		{m.FullSyncs, len(syncTriggers)},
		{m.DriftKeys, len(DriftKinds)},
		{m.StoreErrors, len(StoreOps)},
		{m.QueueDepth, 1},
		{m.HeldBack, 1},
		{m.LastSuccess, 1},
	} {
		if got := testutil.CollectAndCount(tc.c); got != tc.want {
			t.Errorf("%T: %d series, want %d", tc.c, got, tc.want)
		}
	}
	m.Sync("b")
	if got := testutil.CollectAndCount(m.FilesSkipped); got != 2*len(SkipReasons) {
		t.Errorf("two syncs: %d skip series, want %d", got, 2*len(SkipReasons))
	}
}

// TestForgetSync: a sync a reload removed exports nothing more; the other
// keeps its series and values.
func TestForgetSync(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, "test")
	a, b := m.Sync("a"), m.Sync("b")
	a.QueueDepth.Set(3)
	b.QueueDepth.Set(4)
	b.Skip(SkipTooLarge)
	m.ForgetSync("a")
	for _, mf := range gather(t, reg) {
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == SyncLabel && l.GetValue() == "a" {
					t.Errorf("%s still has a series of the removed sync a", mf.GetName())
				}
			}
		}
	}
	if got := testutil.ToFloat64(m.QueueDepth.WithLabelValues("b")); got != 4 {
		t.Errorf("b's queue depth %v after a was forgotten, want 4", got)
	}
	if got := testutil.ToFloat64(m.FilesSkipped.WithLabelValues("b", "too_large")); got != 1 {
		t.Errorf("b's skips %v after a was forgotten, want 1", got)
	}
	var nilM *Metrics
	nilM.ForgetSync("a")
	if nilM.Sync("a") != nil {
		t.Error("a nil Metrics gave a non-nil Sync")
	}
}

// TestTotalsOverSyncs: the totals the progress line and the exit status
// read add up every sync.
func TestTotalsOverSyncs(t *testing.T) {
	m := New(prometheus.NewRegistry(), "test")
	a, b := m.Sync("a"), m.Sync("b")
	a.Upload(UploadSuccess, 100)
	b.Upload(UploadSuccess, 20)
	b.Upload(UploadSuccess, 3)
	b.Upload(UploadFailed, 0)
	a.Skip(SkipKeyInvalid)
	b.Skip(SkipKeyInvalid)
	b.Skip(SkipExcluded)
	for _, tc := range []struct {
		what      string
		got, want float64
	}{
		{"uploaded success", m.Uploaded(UploadSuccess), 3},
		{"uploaded failed", m.Uploaded(UploadFailed), 1},
		{"uploaded bytes success", m.UploadedBytes(UploadSuccess), 123},
		{"skipped key_invalid", m.Skipped(SkipKeyInvalid), 2},
		{"skipped excluded", m.Skipped(SkipExcluded), 1},
		{"b skipped key_invalid", b.Skipped(SkipKeyInvalid), 1},
		{"a uploaded success", a.Uploaded(UploadSuccess), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.what, tc.got, tc.want)
		}
	}
}

// TestLimiterGauges: the token bucket and the 429 pause, read at scrape
// time from the watched limiter; nothing is exported before one is watched.
func TestLimiterGauges(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name   string
		l      LimiterState
		tokens float64
		paused float64
	}{
		{"no limiter", nil, math.NaN(), math.NaN()},
		{"full bucket, never paused", fakeLimiter{tokens: 100, now: now}, 100, 0},
		{"spent bucket, paused for 30s", fakeLimiter{tokens: 0.5, until: now.Add(30 * time.Second), now: now}, 0.5, 1_800_000_030},
		{"pause over", fakeLimiter{tokens: 7, until: now.Add(-time.Second), now: now}, 7, 0},
		{"pause ends now", fakeLimiter{tokens: 7, until: now, now: now}, 7, 0},
		{"requests waiting for promised tokens", fakeLimiter{tokens: -3, now: now}, -3, 0},
		{"bucket disabled", fakeLimiter{tokens: math.Inf(1), now: now}, math.Inf(1), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := New(reg, "test")
			m.WatchLimiter(tc.l)
			got := map[string]float64{}
			for _, mf := range gather(t, reg) {
				if strings.HasPrefix(mf.GetName(), "kvsync_rate_limit_") && mf.GetType().String() == "GAUGE" {
					got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
				}
			}
			for name, want := range map[string]float64{
				"kvsync_rate_limit_tokens":                         tc.tokens,
				"kvsync_rate_limit_paused_until_timestamp_seconds": tc.paused,
			} {
				v, ok := got[name]
				switch {
				case math.IsNaN(want) && ok:
					t.Errorf("%s = %v with no limiter watched, want no series", name, v)
				case !math.IsNaN(want) && !ok:
					t.Errorf("%s missing", name)
				case !math.IsNaN(want) && v != want:
					t.Errorf("%s = %v, want %v", name, v, want)
				}
			}
		})
	}
}
