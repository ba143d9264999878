// Package metrics owns kvsync's Prometheus collectors and its HTTP endpoints
// (/metrics, /healthz, /readyz). Every label is bounded: never a path or key.
package metrics

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/kvapi"
)

var durationBucket = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Metrics holds every collector kvsync exports. Build it with New and pass it
// to the parts that count; nothing registers globally.
type Metrics struct {
	Uploads         *prometheus.CounterVec   // result
	UploadBytes     *prometheus.CounterVec   // result
	Deletes         *prometheus.CounterVec   // result
	APIRequests     *prometheus.CounterVec   // op, code (HTTP status, or "error" when there was no reply)
	APIErrors       *prometheus.CounterVec   // op, cf_code
	RequestDuration *prometheus.HistogramVec // op
	Retries         *prometheus.CounterVec   // op, reason
	RateLimitWait   prometheus.Histogram
	RateLimitPauses prometheus.Counter
	QueueDepth      prometheus.Gauge
	InflightUploads prometheus.Gauge
	Watches         prometheus.Gauge
	Unwatched       prometheus.Gauge
	WatcherOverflow prometheus.Counter
	FilesSkipped    *prometheus.CounterVec // reason
	FullSyncs       *prometheus.CounterVec // trigger
	DriftKeys       *prometheus.CounterVec // kind
	StoreErrors     *prometheus.CounterVec // op
	LastSuccess     prometheus.Gauge
	BuildInfo       *prometheus.GaugeVec
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{
		Uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_uploads_total", Help: "Keys written, by result.",
		}, []string{"result"}),
		UploadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_upload_bytes_total", Help: "Value bytes sent in writes, by result.",
		}, []string{"result"}),
		Deletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_deletes_total", Help: "Keys whose file went away, by what was done.",
		}, []string{"result"}),
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
		QueueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_queue_depth", Help: "Keys waiting to be written or deleted.",
		}),
		InflightUploads: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_inflight_uploads", Help: "Writes and deletes in flight.",
		}),
		Watches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_watched_directories", Help: "Directories with an inotify watch.",
		}),
		Unwatched: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_unwatched_directories", Help: "Directories the kernel refused an inotify watch (fs.inotify.max_user_watches or max_user_instances): only periodic rescans see their changes.",
		}),
		WatcherOverflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvsync_watcher_overflows_total", Help: "Kernel event-queue overflows, each answered by a full rescan.",
		}),
		FilesSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_files_skipped_total", Help: "Files not published, by reason.",
		}, []string{"reason"}),
		FullSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_full_syncs_total", Help: "Full scans of a tree, by trigger.",
		}, []string{"trigger"}),
		DriftKeys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_drift_keys_total", Help: "Keys of the tree a listing showed deleted or overwritten behind kvsync's back, written again, by kind.",
		}, []string{"kind"}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_state_store_errors_total", Help: "Failures of the local state store, by operation.",
		}, []string{"op"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvsync_last_successful_sync_timestamp_seconds", Help: "When a full sync last finished with no failure (Unix time).",
		}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_build_info", Help: "Always 1; the labels carry the build.",
		}, []string{"version", "goversion"}),
	}
	reg.MustRegister(m.Uploads, m.UploadBytes, m.Deletes, m.APIRequests, m.APIErrors, m.RequestDuration,
		m.Retries, m.RateLimitWait, m.RateLimitPauses, m.QueueDepth, m.InflightUploads, m.Watches, m.Unwatched,
		m.WatcherOverflow, m.FilesSkipped, m.FullSyncs, m.DriftKeys, m.StoreErrors, m.LastSuccess, m.BuildInfo)
	m.BuildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	for _, r := range UploadResults {
		m.Uploads.WithLabelValues(string(r))
		m.UploadBytes.WithLabelValues(string(r))
	}
	for _, r := range DeleteResults {
		m.Deletes.WithLabelValues(string(r))
	}
	for _, op := range kvapi.Ops {
		m.RequestDuration.WithLabelValues(string(op))
		for _, r := range RetryReasons {
			m.Retries.WithLabelValues(string(op), string(r))
		}
	}
	for _, op := range []kvapi.Op{kvapi.OpPut, kvapi.OpBulkPut, kvapi.OpDelete, kvapi.OpBulkDelete, kvapi.OpList} {
		m.APIRequests.WithLabelValues(string(op), strconv.Itoa(200))
	}
	for _, r := range SkipReasons {
		m.FilesSkipped.WithLabelValues(string(r))
	}
	for _, t := range syncTriggers {
		m.FullSyncs.WithLabelValues(string(t))
	}
	for _, k := range DriftKinds {
		m.DriftKeys.WithLabelValues(string(k))
	}
	for _, op := range StoreOps {
		m.StoreErrors.WithLabelValues(string(op))
	}
	return m
}
