package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvsync/kvsync/internal/desired"
)

// The label values of kvsync's bounded label sets. Each set is a type, so a
// counter can only be given one of its own values, and New starts every
// combination at zero from these lists. The triggers of full syncs are the
// watcher's desired.Trigger values; the operations are kvapi.Ops.

// UploadResult labels kvsync_uploads_total and kvsync_upload_bytes_total.
type UploadResult string

// The results of a key's write.
const (
	UploadSuccess   UploadResult = "success"
	UploadFailed    UploadResult = "failed"
	UploadRejected  UploadResult = "rejected"
	UploadUnchanged UploadResult = "skipped_unchanged"
)

// UploadResults lists every UploadResult.
var UploadResults = []UploadResult{UploadSuccess, UploadFailed, UploadRejected, UploadUnchanged}

// DeleteResult labels kvsync_deletes_total.
type DeleteResult string

// The results of a key whose file went away.
const (
	DeleteSuccess DeleteResult = "success"
	DeleteFailed  DeleteResult = "failed"
	DeleteKept    DeleteResult = "kept"
	DeleteExpired DeleteResult = "expired"
)

// DeleteResults lists every DeleteResult.
var DeleteResults = []DeleteResult{DeleteSuccess, DeleteFailed, DeleteKept, DeleteExpired}

// RetryReason labels kvsync_api_retries_total.
type RetryReason string

// Why a request was tried again.
const (
	RetryRateLimited RetryReason = "rate_limited"
	RetryServerError RetryReason = "server_error"
	RetryNetwork     RetryReason = "network"
)

// RetryReasons lists every RetryReason.
var RetryReasons = []RetryReason{RetryRateLimited, RetryServerError, RetryNetwork}

// SkipReason labels kvsync_files_skipped_total: why a file is not published.
type SkipReason string

// Why a file is not published.
const (
	SkipTooLarge   SkipReason = "too_large"
	SkipKeyInvalid SkipReason = "key_invalid"
	SkipMetadata   SkipReason = "bad_metadata"
	SkipExcluded   SkipReason = "excluded"
	SkipUnreadable SkipReason = "unreadable"
	SkipSpecial    SkipReason = "special_file"
	SkipSymlink    SkipReason = "symlink"
	SkipDebris     SkipReason = "debris"
	// SkipChanged: the file opened for upload was not the one scanned (a
	// swap, a decoy, a new length); it is scanned again, not sent.
	SkipChanged SkipReason = "changed"
)

// SkipReasons lists every SkipReason.
var SkipReasons = []SkipReason{SkipTooLarge, SkipKeyInvalid, SkipMetadata, SkipExcluded, SkipUnreadable, SkipSpecial, SkipSymlink, SkipDebris, SkipChanged}

// syncTriggers are the trigger label's values.
var syncTriggers = []desired.Trigger{
	desired.TriggerStartup, desired.TriggerPeriodic, desired.TriggerOverflow,
	desired.TriggerError, desired.TriggerReload, desired.TriggerManual,
}

// Upload counts one key's write and, when bytes > 0, the bytes sent.
func (s *Sync) Upload(r UploadResult, bytes int64) {
	s.Uploads.WithLabelValues(string(r)).Inc()
	if bytes > 0 {
		s.UploadBytes.WithLabelValues(string(r)).Add(float64(bytes))
	}
}

// Delete counts n keys whose file went away.
func (s *Sync) Delete(r DeleteResult, n int) {
	s.Deletes.WithLabelValues(string(r)).Add(float64(n))
}

// Skip counts a file that is not published.
func (s *Sync) Skip(r SkipReason) {
	s.FilesSkipped.WithLabelValues(string(r)).Inc()
}

// Drift counts n keys found drifted as k.
func (s *Sync) Drift(k DriftKind, n int) {
	s.DriftKeys.WithLabelValues(string(k)).Add(float64(n))
}

// Skipped is how many files of this sync were not published for r.
func (s *Sync) Skipped(r SkipReason) float64 {
	return counterValue(s.FilesSkipped.WithLabelValues(string(r)))
}

// Uploaded is how many keys' writes of this sync ended as r.
func (s *Sync) Uploaded(r UploadResult) float64 {
	return counterValue(s.Uploads.WithLabelValues(string(r)))
}

// Skipped is how many files of every sync were not published for r.
func (m *Metrics) Skipped(r SkipReason) float64 {
	return sumWhere(m.FilesSkipped, "reason", string(r))
}

// Uploaded is how many keys' writes of every sync ended as r.
func (m *Metrics) Uploaded(r UploadResult) float64 {
	return sumWhere(m.Uploads, "result", string(r))
}

// UploadedBytes is how many bytes the writes of every sync that ended as r
// sent.
func (m *Metrics) UploadedBytes(r UploadResult) float64 {
	return sumWhere(m.UploadBytes, "result", string(r))
}

// counterValue reads a counter back: the progress line and the exit status
// are told by the same numbers /metrics exports.
func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil || d.Counter == nil {
		return 0
	}
	return d.Counter.GetValue()
}

// sumWhere adds up the counters of v whose label is value, over every sync.
func sumWhere(v *prometheus.CounterVec, label, value string) float64 {
	ch := make(chan prometheus.Metric)
	go func() {
		v.Collect(ch)
		close(ch)
	}()
	var sum float64
	for c := range ch {
		var d dto.Metric
		if err := c.Write(&d); err != nil || d.Counter == nil {
			continue
		}
		for _, lp := range d.GetLabel() {
			if lp.GetName() == label && lp.GetValue() == value {
				sum += d.Counter.GetValue()
			}
		}
	}
	return sum
}

// StoreOp labels kvsync_state_store_errors_total: what kvsync was doing
// with its local state store when it failed.
type StoreOp string

// The state store's operations.
const (
	StoreRead   StoreOp = "read"   // a record looked up
	StoreIntent StoreOp = "intent" // a write-ahead mark before a request, or taken back after a refusal
	StoreRecord StoreOp = "record" // a confirmed write, or a key a listing showed current
	StoreForget StoreOp = "forget" // a deleted key's record removed
)

// StoreOps lists every StoreOp.
var StoreOps = []StoreOp{StoreRead, StoreIntent, StoreRecord, StoreForget}

// StoreError counts one failure of the state store at op.
func (s *Sync) StoreError(op StoreOp) {
	s.StoreErrors.WithLabelValues(string(op)).Inc()
}

// DriftKind labels kvsync_drift_keys_total: how a key of the tree that the
// state store called unchanged was found in a listing of the namespace.
type DriftKind string

// The kinds of drift.
const (
	DriftMissing     DriftKind = "missing"     // not listed: deleted behind kvsync's back
	DriftOverwritten DriftKind = "overwritten" // another sync's record, or this sync's for other content
	DriftUnmarked    DriftKind = "unmarked"    // no record: another tool's write, or an earlier kvsync's
)

// DriftKinds lists every DriftKind.
var DriftKinds = []DriftKind{DriftMissing, DriftOverwritten, DriftUnmarked}
