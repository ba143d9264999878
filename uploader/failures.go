package uploader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// refused reports whether err proves that a write was not applied: the API
// answered it with a client error (a 4xx other than the retryable 408, 409
// and 429), or kvapi refused to send it. Network errors, 5xx answers and a
// 2xx reply saying success:false prove nothing either way.
func refused(err error) bool {
	var ve *kvapi.ValidationError
	if errors.As(err, &ve) {
		return true
	}
	var ae *kvapi.APIError
	return errors.As(err, &ae) && ae.StatusCode >= 400 && ae.StatusCode < 500 && !ae.Retryable()
}

// permanent reports whether sending the same request again cannot succeed.
func permanent(err error) bool {
	var ve *kvapi.ValidationError
	if errors.As(err, &ve) {
		return true
	}
	var ae *kvapi.APIError
	return errors.As(err, &ae) && !ae.Retryable()
}

// writeFailure classifies a failed write of one key.
func (e *Engine) writeFailure(ctx context.Context, it *item, err error, logIt bool) result {
	st := it.st
	var ve *kvapi.ValueError
	switch {
	case ctx.Err() != nil:
		return result{it: it, requeue: true} // shutting down: stays queued
	case changedSinceScan(err):
		// Not the file the scan saw (another file, a symlink on its way,
		// another size): publishing it could send anything, a secret from
		// outside the tree included. Its key is left as it is, held back
		// like an unreadable file, and the watcher (when one runs) looks
		// at the path again, which emits the key's state anew.
		if m := e.o.Metrics; m != nil {
			m.Skip(metrics.SkipChanged)
		}
		if e.o.Recheck == nil {
			e.log.Warn("file changed since it was scanned; not written", "key", st.Key, "path", st.Path, "err", err)
		} else if e.firstRecheck(st) {
			e.log.Warn("file changed since it was scanned; not written, scanned again", "key", st.Key, "path", st.Path, "err", err)
			e.o.Recheck(st.Key)
		} else {
			e.log.Warn("file changed since it was scanned, and again after it was scanned again; held back until it changes or the next full sync",
				"key", st.Key, "path", st.Path, "err", err)
		}
		return result{it: it, out: outcome{kind: outHeldBack, err: err}}
	case errors.Is(err, fs.ErrNotExist):
		e.log.Debug("file vanished before upload; skipped", "key", st.Key, "path", st.Path)
		return settled(it, outVanished)
	case errors.Is(err, fs.ErrPermission):
		// Unreadable, as the watcher would have found had it read the
		// file (it does not when the key has no record yet): held back the
		// same way, its key neither written nor deleted, and tried again
		// when the file changes or at the next full sync rather than every
		// RetryBackoff, which would only repeat the same refusal.
		e.log.Warn("holding back unreadable file; retried on its next change or full sync", "key", st.Key, "path", st.Path, "err", err)
		if m := e.o.Metrics; m != nil {
			m.Skip(metrics.SkipUnreadable)
		}
		return result{it: it, out: outcome{kind: outHeldBack, err: err}}
	case errors.Is(err, kvapi.ErrValueSizeMismatch) && it.attempts+1 < maxAttempts:
		// The file changed while it was sent; send its new content.
		it.attempts++
		e.log.Debug("file changed while it was sent; sending it again", "key", st.Key, "path", st.Path)
		return result{it: it, requeue: true}
	case errors.Is(err, kvapi.ErrExpirationTooSoon):
		// An expiration rule's `at` passed while kvsync runs (config
		// validation refuses one already past at load). The key keeps
		// what it holds, like any file that cannot be published as it is,
		// and one line says why for every file the rule matches.
		if e.firstPassedAt(st.Expiration.At.Unix()) {
			e.log.Error("an expiration rule's `at` has passed (KV needs one at least 60 s ahead): the files it matches are held back and their keys kept until the rule is changed and the config reloaded",
				"at", st.Expiration.At.UTC().Format(time.RFC3339), "first_key", st.Key)
		}
		return result{it: it, out: outcome{kind: outHeldBack, err: err}}
	case errors.As(err, &ve):
		// Its source could not be read; another try later may work.
	case permanent(err):
		if logIt {
			e.log.Error("write refused; not retried until the file changes or the next full sync",
				append([]any{"key", st.Key, "path", st.Path, "err", err}, codes(err)...)...)
		}
		return result{it: it, out: outcome{kind: outRejected, err: err}}
	}
	if logIt {
		e.log.Warn("write failed; retrying later", append([]any{"key", st.Key, "path", st.Path, "err", err,
			"retry_in", e.o.RetryBackoff}, codes(err)...)...)
	}
	return result{it: it, out: outcome{kind: outFailed, err: err}, retry: true}
}

// firstPassedAt records that the expiration instant at has passed and
// reports whether that is news.
func (e *Engine) firstPassedAt(at int64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.passedAt[at] {
		return false
	}
	e.passedAt[at] = true
	return true
}

// firstRecheck records that st's file was not the one its scan saw and
// reports whether that is news for this key (see Engine.rechecked).
func (e *Engine) firstRecheck(st desired.State) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if id, ok := e.rechecked[st.Key]; ok && id == st.File {
		return false
	}
	e.rechecked[st.Key] = st.File
	return true
}

// unsuccessful handles a key the API listed in unsuccessful_keys: tried
// again at once a few times, then failed and retried after RetryBackoff.
func (e *Engine) unsuccessful(it *item, op kvapi.Op) result {
	it.attempts++
	if it.attempts < maxAttempts {
		return result{it: it, requeue: true}
	}
	err := fmt.Errorf("kv %s key %q: listed in unsuccessful_keys %d times", op, it.st.Key, it.attempts)
	e.log.Warn("bulk request left key unwritten; retrying later", "key", it.st.Key, "path", it.st.Path, "retry_in", e.o.RetryBackoff)
	return result{it: it, out: outcome{kind: outFailed, err: err}, retry: true}
}

// bulkFailure classifies a bulk request refused as a whole.
func (e *Engine) bulkFailure(ctx context.Context, batch []prepared, err error) []result {
	rs := make([]result, 0, len(batch))
	if ctx.Err() != nil {
		for _, b := range batch {
			rs = append(rs, result{it: b.it, requeue: true})
		}
		return rs
	}
	var ve *kvapi.ValidationError
	var ae *kvapi.APIError
	switch {
	case errors.As(err, &ve) && ve.Key != "":
		// One pair is invalid: it fails, the others go in another batch.
		for _, b := range batch {
			if b.it.st.Key == ve.Key {
				rs = append(rs, e.writeFailure(ctx, b.it, err, true))
			} else {
				rs = append(rs, result{it: b.it, requeue: true})
			}
		}
		return rs
	case errors.As(err, &ve),
		errors.As(err, &ae) && (ae.StatusCode == http.StatusBadRequest || ae.StatusCode == http.StatusRequestEntityTooLarge):
		// The batch as a whole was refused: halve it until the culprit is
		// alone and gets its own verdict from a single PUT.
		if len(batch) > 1 {
			half := len(batch) / 2
			e.log.Warn("bulk write refused; splitting the batch", append([]any{"pairs", len(batch), "next_pairs", half, "err", err}, codes(err)...)...)
			for _, b := range batch {
				b.it.split = half
				rs = append(rs, result{it: b.it, requeue: true})
			}
			return rs
		}
	}
	logIt := true
	for _, b := range batch {
		rs = append(rs, e.writeFailure(ctx, b.it, err, logIt))
		logIt = false
	}
	if len(batch) > 1 {
		e.log.Warn("bulk write failed for every key of the batch", "pairs", len(batch))
	}
	return rs
}

func (e *Engine) deleteFailure(ctx context.Context, it *item, err error, logIt bool) result {
	key := it.st.Key
	switch {
	case ctx.Err() != nil:
		return result{it: it, requeue: true}
	case permanent(err):
		if logIt {
			e.log.Error("delete refused; not retried until the next full sync", append([]any{"key", key, "err", err}, codes(err)...)...)
		}
		return result{it: it, out: outcome{kind: outRejected, err: err}}
	}
	if logIt {
		e.log.Warn("delete failed; retrying later", append([]any{"key", key, "err", err, "retry_in", e.o.RetryBackoff}, codes(err)...)...)
	}
	return result{it: it, out: outcome{kind: outFailed, err: err}, retry: true}
}

func codes(err error) []any {
	var ae *kvapi.APIError
	if errors.As(err, &ae) && len(ae.Errors) > 0 {
		return []any{"cf_codes", ae.Codes(), "status", ae.StatusCode}
	}
	if s := kvapi.StatusCode(err); s != 0 {
		return []any{"status", s}
	}
	return nil
}
