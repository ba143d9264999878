package uploader

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// capRefusal applies MaxDeletes to n deletions of one full sync.
func (e *Engine) capRefusal(n int) string {
	if e.o.Delete == DeleteKeep || e.o.MaxDeletes < 0 || n <= e.o.MaxDeletes {
		return ""
	}
	return fmt.Sprintf("%d keys would be deleted, more than max_deletes=%d; nothing deleted", n, e.o.MaxDeletes)
}

// allowWatchedDelete applies MaxDeletes to the deletions the watcher
// reports while running: those between two full syncs count as one pass,
// so emptying the tree under a running daemon (an rm -rf, a volume
// remounted empty, an app that wipes its output before regenerating it)
// deletes no more than a full sync would. A deletion past the cap is kept:
// the key and its record stay, and the next full sync (rescan_interval, a
// reload), finding the file still gone, decides with its own count. mu is
// held.
func (e *Engine) allowWatchedDelete(st desired.State) bool {
	if e.o.Delete == DeleteKeep || e.o.MaxDeletes < 0 {
		return true
	}
	if e.watchedDeletes < e.o.MaxDeletes {
		e.watchedDeletes++
		return true
	}
	e.watchedKept++
	if e.watchedKept == 1 {
		e.log.Error("more files deleted since the last full sync than max_deletes allows; their keys are kept until a full sync (rescan_interval, or a reload) finds them still gone and within max_deletes",
			"max_deletes", e.o.MaxDeletes, "key", st.Key, "path", st.Path)
	} else {
		e.log.Debug("deletion kept: over max_deletes since the last full sync", "key", st.Key, "path", st.Path)
	}
	e.countDelete(metrics.DeleteKept, 1)
	return false
}

// candidate is a key of this sync's absent from a full sync's snapshot:
// recorded in the store, or (remote) only shown as this sync's by the
// listing. A pass finds them by a merge (merge.go).
type candidate struct {
	key    string
	rec    state.Record
	remote bool
}

// takeDeletes collects queued deletions into one bulk request.
func (e *Engine) takeDeletes() *job {
	var batch []*item
	for _, it := range e.queue {
		if !it.taken && it.cat == catDelete {
			batch = append(batch, it)
			if len(batch) == kvapi.MaxBulkPairs {
				break
			}
		}
	}
	for _, it := range batch {
		e.take(it)
	}
	e.queue = slices.DeleteFunc(e.queue, func(it *item) bool { return it.taken })
	kind := jobBulkDelete
	if e.o.Delete == DeleteKeep {
		kind = jobKeep
	}
	return &job{kind: kind, items: batch}
}

// ownRecord returns the record of a key to delete, or settles the deletion
// when the key is not kvsync's or was written again since it was planned.
func (e *Engine) ownRecord(it *item) (state.Record, *result) {
	key := it.st.Key
	rec, ok, err := e.o.Store.Get(e.o.Scope, key)
	if err != nil {
		e.storeErr(metrics.StoreRead)
		return rec, &result{it: it, out: outcome{kind: outFailed, err: fmt.Errorf("reading the state store: %w", err)}, retry: true}
	}
	if it.remote {
		if ok {
			// Recorded since the listing: written since it was planned.
			e.log.Debug("key written since its deletion was planned; not deleted", "key", key)
			r := settled(it, outSuperseded)
			return rec, &r
		}
		// The listing's record in KV says it is this sync's; a pending
		// record makes the expire policy read its metadata.
		rec, ok = state.Record{Pending: true}, true
	}
	if !ok {
		e.log.Debug("file gone but kvsync has no record of its key; left alone", "key", key)
		r := settled(it, outNotOurs)
		return rec, &r
	}
	if it.expect != nil && (rec.Hash != it.expect.Hash || !rec.Written.Equal(it.expect.Written)) {
		e.log.Debug("key written again since its deletion was planned; not deleted", "key", key)
		r := settled(it, outSuperseded)
		return rec, &r
	}
	if e.o.DryRun {
		e.log.Info("dry run: would delete", "key", key, "policy", e.o.Delete)
		r := settled(it, outPlanned)
		return rec, &r
	}
	return rec, nil
}

// deleteOne deletes one key. Its record is marked pending first: if the
// deletion takes effect but its reply is lost, a file that comes back with
// the recorded content must still be written again.
func (e *Engine) deleteOne(ctx context.Context, it *item) result {
	rec, r := e.ownRecord(it)
	if r != nil {
		return *r
	}
	if err := e.intend(marks(e.o.Now(), keyRecord{it.st.Key, rec, true})); err != nil {
		return e.intentFailure(it, err)
	}
	err := e.o.KV.DeleteValue(ctx, e.o.Namespace, it.st.Key)
	if err != nil && kvapi.StatusCode(err) != http.StatusNotFound {
		return e.deleteFailure(ctx, it, err, true)
	}
	e.forget([]string{it.st.Key})
	return settled(it, outDeleted)
}

func (e *Engine) deleteBulk(ctx context.Context, items []*item) []result {
	rs := make([]result, 0, len(items))
	var todo []*item
	var krs []keyRecord
	for _, it := range items {
		rec, r := e.ownRecord(it)
		if r != nil {
			rs = append(rs, *r)
			continue
		}
		todo = append(todo, it)
		krs = append(krs, keyRecord{it.st.Key, rec, true})
	}
	if len(todo) == 0 {
		return rs
	}
	if err := e.intend(marks(e.o.Now(), krs...)); err != nil {
		for _, it := range todo {
			rs = append(rs, e.intentFailure(it, err))
		}
		return rs
	}
	keys := make([]string, len(todo))
	for i, it := range todo {
		keys[i] = it.st.Key
	}
	res, err := e.o.KV.BulkDelete(ctx, e.o.Namespace, keys)
	if err != nil {
		logIt := true
		for _, it := range todo {
			rs = append(rs, e.deleteFailure(ctx, it, err, logIt))
			logIt = false
		}
		return rs
	}
	bad := make(map[string]bool, len(res.Unsuccessful))
	for _, k := range res.Unsuccessful {
		bad[k] = true
	}
	done := keys[:0]
	for _, it := range todo {
		if bad[it.st.Key] {
			rs = append(rs, e.unsuccessful(it, kvapi.OpBulkDelete))
			continue
		}
		done = append(done, it.st.Key)
		rs = append(rs, settled(it, outDeleted))
	}
	e.forget(done)
	return rs
}

// keep forgets keys whose file went away but leaves them in KV.
func (e *Engine) keep(items []*item) []result {
	rs := make([]result, 0, len(items))
	var keys []string
	for _, it := range items {
		if _, r := e.ownRecord(it); r != nil {
			rs = append(rs, *r)
			continue
		}
		e.log.Info("file gone; key kept in KV (delete policy keep) and no longer managed", "key", it.st.Key)
		keys = append(keys, it.st.Key)
		rs = append(rs, settled(it, outKept))
	}
	e.forget(keys)
	return rs
}

// expireOne rewrites a key whose file went away with expiration_ttl =
// DeleteTTL: a read of its current value, then a write of it (two requests),
// keeping the recorded metadata. A key marked pending may hold metadata
// kvsync never saw confirmed, so its metadata is read too (a third request).
func (e *Engine) expireOne(ctx context.Context, it *item) result {
	rec, r := e.ownRecord(it)
	if r != nil {
		return *r
	}
	key := it.st.Key
	ttl := int64(e.o.DeleteTTL / time.Second)
	vi, err := e.o.KV.GetValue(ctx, e.o.Namespace, key)
	if kvapi.StatusCode(err) == http.StatusNotFound {
		e.forget([]string{key})
		return settled(it, outExpired) // gone already
	}
	if err != nil {
		return e.deleteFailure(ctx, it, err, true)
	}
	if vi.Expiration > 0 && vi.Expiration <= e.o.Now().Unix()+ttl {
		e.forget([]string{key})
		return settled(it, outExpired) // expires soon enough by itself
	}
	opts := kvapi.PutOptions{Metadata: rec.Metadata, ExpirationTTL: ttl}
	if rec.Pending || rec.Hash == "" {
		// What KV holds is known only from a listing, or not at all.
		m, err := e.o.KV.GetMetadata(ctx, e.o.Namespace, key)
		if kvapi.StatusCode(err) == http.StatusNotFound {
			e.forget([]string{key})
			return settled(it, outExpired) // gone since it was read
		}
		if err != nil {
			return e.deleteFailure(ctx, it, err, true)
		}
		opts.Metadata = compactJSON(m)
		if e.o.Owner != "" {
			opts.Metadata, _, _ = kvrecord.Split(m)
		}
	}
	if e.o.Owner != "" {
		// Marked as expiring: no later listing takes it for a file's key
		// to expire again, and a file that comes back is written anew.
		opts.Metadata = kvrecord.Add(opts.Metadata, kvrecord.Mark{Owner: e.o.Owner, Expiring: true})
	}
	if err := e.intend(marks(e.o.Now(), keyRecord{key, rec, true})); err != nil {
		return e.intentFailure(it, err)
	}
	if err := e.o.KV.PutValue(ctx, e.o.Namespace, key, kvapi.Bytes(vi.Value), opts); err != nil {
		return e.deleteFailure(ctx, it, err, true)
	}
	e.forget([]string{key})
	return settled(it, outExpired)
}
