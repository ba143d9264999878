// Package metrics owns kvsync's Prometheus collectors and its HTTP endpoints
// (/metrics, /healthz, /readyz). Every label is bounded: never a path or key.
//
// Series come in two kinds. Per-sync series carry a sync label, the sync's
// configured name, and are counted through the *Sync that Metrics.Sync
// returns: one per configured sync, so a daemon with several trees tells
// them apart. API-level series (requests, errors, retries, the token bucket)
// are per account: every sync shares one client and one budget.
package metrics

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/kvapi"
)

// SyncLabel is the label that names the sync on per-sync series.
const SyncLabel = "sync"

var durationBucket = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Metrics holds every collector kvsync exports. Build it with New and pass it
// to the parts that count; nothing registers globally. The per-sync vectors
// have SyncLabel first; count into them through Sync.
type Metrics struct {
	// Per sync.
	Uploads         *prometheus.CounterVec // sync, result
	UploadBytes     *prometheus.CounterVec // sync, result
	Deletes         *prometheus.CounterVec // sync, result
	QueueDepth      *prometheus.GaugeVec   // sync
	InflightUploads *prometheus.GaugeVec   // sync
	HeldBack        *prometheus.GaugeVec   // sync
	Watches         *prometheus.GaugeVec   // sync
	Unwatched       *prometheus.GaugeVec   // sync
	WatcherOverflow *prometheus.CounterVec // sync
	FilesSkipped    *prometheus.CounterVec // sync, reason
	FullSyncs       *prometheus.CounterVec // sync, trigger
	DriftKeys       *prometheus.CounterVec // sync, kind
	StoreErrors     *prometheus.CounterVec // sync, op
	LastSuccess     *prometheus.GaugeVec   // sync

	// Per account.
	APIRequests     *prometheus.CounterVec   // op, code (HTTP status, or "error" when there was no reply)
	APIErrors       *prometheus.CounterVec   // op, cf_code
	RequestDuration *prometheus.HistogramVec // op
	Retries         *prometheus.CounterVec   // op, reason
	RateLimitWait   prometheus.Histogram
	RateLimitPauses prometheus.Counter
	// limiter exports kvsync_rate_limit_tokens and
	// kvsync_rate_limit_paused_until_timestamp_seconds, read from the
	// limiter that WatchLimiter attaches.
	limiter   *limiterCollector
	BuildInfo *prometheus.GaugeVec
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer, version string) *Metrics {
	perSync := func(labels ...string) []string { return append([]string{SyncLabel}, labels...) }
	m := &Metrics{
		Uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_uploads_total", Help: "Keys written, by sync and result.",
		}, perSync("result")),
		UploadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_upload_bytes_total", Help: "Value bytes sent in writes, by sync and result.",
		}, perSync("result")),
		Deletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_deletes_total", Help: "Keys whose file went away, by sync and what was done.",
		}, perSync("result")),
		QueueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_queue_depth", Help: "Keys of a sync waiting to be written or deleted.",
		}, perSync()),
		InflightUploads: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_inflight_uploads", Help: "Writes and deletes of a sync in flight.",
		}, perSync()),
		HeldBack: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_files_held_back", Help: "Files of a sync held back now: their key is neither written nor deleted until the file changes or the next full sync.",
		}, perSync()),
		Watches: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_watched_directories", Help: "Directories of a sync with an inotify watch.",
		}, perSync()),
		Unwatched: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_unwatched_directories", Help: "Directories of a sync the kernel refused an inotify watch (fs.inotify.max_user_watches or max_user_instances): only periodic rescans see their changes.",
		}, perSync()),
		WatcherOverflow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_watcher_overflows_total", Help: "Kernel event-queue overflows of a sync's watcher, each answered by a full rescan.",
		}, perSync()),
		FilesSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_files_skipped_total", Help: "Files not published, by sync and reason.",
		}, perSync("reason")),
		FullSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_full_syncs_total", Help: "Full scans of a tree, by sync and trigger.",
		}, perSync("trigger")),
		DriftKeys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_drift_keys_total", Help: "Keys of the tree a listing showed deleted or overwritten behind kvsync's back, written again, by sync and kind.",
		}, perSync("kind")),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_state_store_errors_total", Help: "Failures of the local state store, by sync and operation.",
		}, perSync("op")),
		LastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_last_successful_sync_timestamp_seconds", Help: "When a sync last knew KV to hold its whole tree (Unix time).",
		}, perSync()),
		APIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_api_requests_total", Help: "KV API requests, by operation and HTTP status (\"error\" when no reply came).",
		}, []string{"op", "code"}),
		APIErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_api_errors_total", Help: "Cloudflare error codes in failed KV API replies, by operation.",
		}, []string{"op", "cf_code"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kvsync_api_request_duration_seconds", Help: "KV API request latency, by operation.", Buckets: durationBucket,
		}, []string{"op"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_api_retries_total", Help: "KV API requests sent again, by operation and reason.",
		}, []string{"op", "reason"}),
		RateLimitWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kvsync_rate_limiter_wait_seconds", Help: "Time requests waited for the account's token bucket or a 429 pause.", Buckets: durationBucket,
		}),
		RateLimitPauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvsync_rate_limit_pauses_total", Help: "Times a 429 paused every request of the account.",
		}),
		limiter: newLimiterCollector(),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_build_info", Help: "Always 1; the labels carry the build.",
		}, []string{"version", "goversion"}),
	}
	reg.MustRegister(m.Uploads, m.UploadBytes, m.Deletes, m.QueueDepth, m.InflightUploads, m.HeldBack,
		m.Watches, m.Unwatched, m.WatcherOverflow, m.FilesSkipped, m.FullSyncs, m.DriftKeys, m.StoreErrors,
		m.LastSuccess, m.APIRequests, m.APIErrors, m.RequestDuration, m.Retries, m.RateLimitWait,
		m.RateLimitPauses, m.limiter, m.BuildInfo)
	m.BuildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	for _, op := range kvapi.Ops {
		m.RequestDuration.WithLabelValues(string(op))
		for _, r := range RetryReasons {
			m.Retries.WithLabelValues(string(op), string(r))
		}
	}
	for _, op := range []kvapi.Op{kvapi.OpPut, kvapi.OpBulkPut, kvapi.OpDelete, kvapi.OpBulkDelete, kvapi.OpList} {
		m.APIRequests.WithLabelValues(string(op), strconv.Itoa(200))
	}
	return m
}

// perSyncVecs lists the vectors that carry SyncLabel.
func (m *Metrics) perSyncVecs() []interface {
	DeletePartialMatch(prometheus.Labels) int
} {
	return []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{
		m.Uploads, m.UploadBytes, m.Deletes, m.QueueDepth, m.InflightUploads, m.HeldBack, m.Watches,
		m.Unwatched, m.WatcherOverflow, m.FilesSkipped, m.FullSyncs, m.DriftKeys, m.StoreErrors, m.LastSuccess,
	}
}

// Sync returns the collectors of the sync called name, each with its sync
// label set, and starts every one of its label combinations at zero. Calls
// with the same name share the same series, so a sync restarted by a reload
// carries on counting where it left off. A nil m returns nil, which the
// watcher and the uploader take as "count nothing".
func (m *Metrics) Sync(name string) *Sync {
	if m == nil {
		return nil
	}
	l := prometheus.Labels{SyncLabel: name}
	s := &Sync{
		name:            name,
		Uploads:         m.Uploads.MustCurryWith(l),
		UploadBytes:     m.UploadBytes.MustCurryWith(l),
		Deletes:         m.Deletes.MustCurryWith(l),
		QueueDepth:      m.QueueDepth.With(l),
		InflightUploads: m.InflightUploads.With(l),
		HeldBack:        m.HeldBack.With(l),
		Watches:         m.Watches.With(l),
		Unwatched:       m.Unwatched.With(l),
		WatcherOverflow: m.WatcherOverflow.With(l),
		FilesSkipped:    m.FilesSkipped.MustCurryWith(l),
		FullSyncs:       m.FullSyncs.MustCurryWith(l),
		DriftKeys:       m.DriftKeys.MustCurryWith(l),
		StoreErrors:     m.StoreErrors.MustCurryWith(l),
		LastSuccess:     m.LastSuccess.With(l),
	}
	for _, r := range UploadResults {
		s.Uploads.WithLabelValues(string(r))
		s.UploadBytes.WithLabelValues(string(r))
	}
	for _, r := range DeleteResults {
		s.Deletes.WithLabelValues(string(r))
	}
	for _, r := range SkipReasons {
		s.FilesSkipped.WithLabelValues(string(r))
	}
	for _, t := range syncTriggers {
		s.FullSyncs.WithLabelValues(string(t))
	}
	for _, k := range DriftKinds {
		s.DriftKeys.WithLabelValues(string(k))
	}
	for _, op := range StoreOps {
		s.StoreErrors.WithLabelValues(string(op))
	}
	return s
}

// ForgetSync removes every series of the sync called name: a sync a reload
// removed must not go on exporting its last values, which would read as a
// sync that is still there and stuck.
func (m *Metrics) ForgetSync(name string) {
	if m == nil {
		return
	}
	for _, v := range m.perSyncVecs() {
		v.DeletePartialMatch(prometheus.Labels{SyncLabel: name})
	}
}

// Sync is one sync's view of the per-sync collectors: the vectors are
// curried with its sync label, so their WithLabelValues takes only the
// remaining labels. Build it with Metrics.Sync.
type Sync struct {
	name            string
	Uploads         *prometheus.CounterVec // result
	UploadBytes     *prometheus.CounterVec // result
	Deletes         *prometheus.CounterVec // result
	QueueDepth      prometheus.Gauge
	InflightUploads prometheus.Gauge
	HeldBack        prometheus.Gauge
	Watches         prometheus.Gauge
	Unwatched       prometheus.Gauge
	WatcherOverflow prometheus.Counter
	FilesSkipped    *prometheus.CounterVec // reason
	FullSyncs       *prometheus.CounterVec // trigger
	DriftKeys       *prometheus.CounterVec // kind
	StoreErrors     *prometheus.CounterVec // op
	LastSuccess     prometheus.Gauge
}

// Name is the sync label's value.
func (s *Sync) Name() string { return s.name }
