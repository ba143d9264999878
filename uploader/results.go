package uploader

import (
	"fmt"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

// Report is the outcome of one full sync (or, from Plan, what it would do).
type Report struct {
	Written, Unchanged, Deleted, Kept, Failed, HeldBack int
	// Bytes is the value bytes written (or, from Plan, to be written).
	Bytes int64
	// WouldWrite and WouldDelete list keys, sorted; only Plan and dry runs
	// fill them.
	WouldWrite, WouldDelete []string
	// Failures names the keys that failed or were held back (at most 1000;
	// Failed and HeldBack stay exact).
	Failures []Failure
	// DeletesRefused says why nothing was deleted, when deletions were due
	// but refused.
	DeletesRefused string
	// Incomplete says why the scan of the tree was not complete (part of
	// it could not be read, or the sync was cut short); "" when it was.
	Incomplete string
	// List says whether and how the namespace was listed for this sync.
	List ListInfo
	// Drift counts keys the state store called unchanged that the listing
	// showed deleted or overwritten; they were written again.
	Drift int
}

// Failure is one key that could not be published.
type Failure struct {
	Key, Path string
	Err       error
	// HeldBack: the file could not be published as it is (unreadable, an
	// invalid sidecar, too large), so its key was left as it was, rather
	// than a request that failed.
	HeldBack bool
}

func (r Report) err() error {
	if r.Failed == 0 && r.HeldBack == 0 && r.DeletesRefused == "" {
		return nil
	}
	msg := fmt.Sprintf("%d keys failed, %d held back", r.Failed, r.HeldBack)
	if r.DeletesRefused != "" {
		msg += "; deletes refused: " + r.DeletesRefused
	}
	return fmt.Errorf("%w: %s", ErrSyncIncomplete, msg)
}

type outKind int

const (
	outWritten outKind = iota
	outUnchanged
	outVanished   // the file was gone before it could be sent
	outFailed     // retryable; tried again later
	outRejected   // permanent for this desired state
	outDeleted    // deleted from KV
	outExpired    // rewritten to expire (the expire policy)
	outKept       // left in KV (the keep policy)
	outNotOurs    // no record: kvsync never wrote the key
	outSuperseded // a planned deletion of a key written since
	outHeldBack
	outPlanned // dry run
)

type outcome struct {
	kind  outKind
	bytes int64
	err   error
}

func (r *Report) add(st desired.State, o outcome) {
	switch o.kind {
	case outWritten:
		r.Written++
		r.Bytes += o.bytes
	case outUnchanged:
		r.Unchanged++
	case outFailed, outRejected:
		r.Failed++
		r.addFailure(st, o.err)
	case outDeleted, outExpired:
		r.Deleted++
	case outKept:
		r.Kept++
	case outHeldBack:
		r.HeldBack++
		if len(r.Failures) < maxReportFailures {
			r.Failures = append(r.Failures, Failure{Key: st.Key, Path: st.Path, Err: o.err, HeldBack: true})
		}
	case outPlanned:
		if st.Deleted {
			r.WouldDelete = append(r.WouldDelete, st.Key)
		} else {
			r.WouldWrite = append(r.WouldWrite, st.Key)
			r.Bytes += st.Size
		}
	}
}

func (r *Report) addFailure(st desired.State, err error) {
	if len(r.Failures) < maxReportFailures {
		r.Failures = append(r.Failures, Failure{Key: st.Key, Path: st.Path, Err: err})
	}
}

// result settles one in-flight key. requeue puts it back at once with its
// waiters still waiting; retry settles it as failed and tries it again after
// RetryBackoff.
type result struct {
	it      *item
	out     outcome
	requeue bool
	retry   bool
}

func settled(it *item, k outKind) result { return result{it: it, out: outcome{kind: k}} }

// complete settles the results of one job. A key's newer state that arrived
// while it was in flight is queued now, so the last write wins.
func (e *Engine) complete(j *job, rs []result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.bulkHeld -= j.held
	for _, r := range rs {
		it := r.it
		key := it.st.Key
		delete(e.inflight, key)
		next := e.deferred[key]
		delete(e.deferred, key)
		switch {
		case r.requeue:
			// Not settled: whoever waits for it keeps waiting.
			if next != nil {
				next.passes = append(it.passes, next.passes...)
				e.push(next)
			} else {
				e.push(it)
			}
			continue
		case r.retry:
			e.resolve(it, r.out, true)
			switch {
			case next != nil:
				e.push(next)
			case e.closed:
				e.log.Error("key not written before shutdown; the next full sync retries it", "key", key, "path", it.st.Path, "err", r.out.err)
			default:
				it.passes = nil
				it.attempts = 0
				it.notBefore = time.Now().Add(e.o.RetryBackoff)
				if e.nextDue.IsZero() || it.notBefore.Before(e.nextDue) {
					e.nextDue = it.notBefore
				}
				e.delayed[key] = it
			}
			continue
		}
		e.resolve(it, r.out, true)
		switch r.out.kind {
		case outWritten:
			delete(e.rechecked, key)
		case outRejected:
			e.rejected[key] = it.st
		case outHeldBack:
			if next == nil {
				e.held[key] = true // until its file changes (offer) or a full sync
			}
		}
		if next != nil {
			e.push(next)
		}
	}
	e.jobs--
	e.gauges()
	e.noteCaughtUp()
	e.broadcast()
	e.poke()
}

// noteCaughtUp moves the last-successful-sync gauge when KV is known to hold
// the whole tree: the latest full sync was clean and since then every change
// was written, none failed and none is held back. Refreshing it between the
// hourly full syncs lets an alert on its age catch a daemon whose writes
// keep failing within minutes, not hours.
func (e *Engine) noteCaughtUp() {
	m := e.o.Metrics
	if m == nil || !e.lastPassClean || e.o.DryRun {
		return
	}
	if e.size() == 0 && e.jobs == 0 && e.openPasses == 0 && len(e.rejected) == 0 && len(e.held) == 0 {
		m.LastSuccess.Set(float64(e.o.Now().UnixNano()) / 1e9)
	}
}

// resolve tells the passes waiting for it its outcome and counts it.
func (e *Engine) resolve(it *item, o outcome, count bool) {
	if count {
		e.countOutcome(it.st, o)
	}
	ps := it.passes
	it.passes = nil
	for _, p := range ps {
		p.rep.add(it.st, o)
		p.left--
		if p.left == 0 && p.sealed {
			e.advance(p)
		}
	}
}

func (e *Engine) countOutcome(st desired.State, o outcome) {
	switch o.kind {
	case outWritten:
		e.countUpload(metrics.UploadSuccess, o.bytes)
	case outUnchanged:
		e.countUpload(metrics.UploadUnchanged, 0)
	case outRejected:
		if st.Deleted {
			e.countDelete(metrics.DeleteFailed, 1)
		} else {
			e.countUpload(metrics.UploadRejected, 0)
		}
	case outFailed:
		if st.Deleted {
			e.countDelete(metrics.DeleteFailed, 1)
		} else {
			e.countUpload(metrics.UploadFailed, 0)
		}
	case outDeleted:
		e.countDelete(metrics.DeleteSuccess, 1)
	case outExpired:
		e.countDelete(metrics.DeleteExpired, 1)
	case outKept:
		e.countDelete(metrics.DeleteKept, 1)
	}
}

func (e *Engine) countUpload(r metrics.UploadResult, bytes int64) {
	if e.o.Metrics != nil {
		e.o.Metrics.Upload(r, bytes)
	}
}

func (e *Engine) countDelete(r metrics.DeleteResult, n int) {
	if e.o.Metrics != nil {
		e.o.Metrics.Delete(r, n)
	}
}
