package uploader

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
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
// listing.
type candidate struct {
	key    string
	rec    state.Record
	remote bool
}

// candidates lists the keys a complete snapshot implies are gone, or says
// why none may be deleted. With a listing l, a key is this sync's when its
// record in KV says so, or when the store has a record of it and KV shows
// no mark at all (a key written by a kvsync from before records in
// metadata); a key whose mark is another's is not, and the store's record
// of it is dropped. A key kept until it expires (delete: expire) is left
// to expire. Under the keep policy only the store's keys are candidates:
// a key kept is no longer managed, though its mark stays.
func (e *Engine) candidates(s desired.Snapshot, l *listing) ([]candidate, string, error) {
	// The snapshot's keys, sorted (a watcher's snapshot already is): a
	// slice of the states' own strings, 16 bytes a key, where a set would
	// cost several times that for the length of the pass.
	present := make(keySet, 0, len(s.States))
	for _, st := range s.States {
		if !st.Deleted {
			present = append(present, st.Key)
		}
	}
	if !slices.IsSorted(present) {
		slices.Sort(present)
	}
	if !s.Complete {
		if l != nil {
			// Nothing is deleted, but what the listing says is this
			// sync's is kept, for the full syncs that follow without a
			// listing to delete when their snapshot is whole.
			e.recordListed(l, present)
		}
		reason := s.Reason
		if reason == "" {
			reason = "part of the tree could not be read"
		}
		return nil, fmt.Sprintf("snapshot incomplete (%s); keys absent from it are not deleted", reason), nil
	}
	var cands []candidate
	var disowned []string
	recorded := 0
	var inStore keySet // in the store's order, which bbolt's is already
	err := e.o.Store.ForEach(e.o.Scope, e.o.Prefix, func(key string, r state.Record) error {
		inTree := present.has(key)
		if l != nil {
			inStore = append(inStore, key)
			if rk, ok := l.get(key); ok && rk.marked && (!rk.ours || rk.expiring) {
				if !rk.ours && !inTree {
					disowned = append(disowned, key)
				}
				return nil
			}
		}
		recorded++
		if !inTree {
			cands = append(cands, candidate{key: key, rec: r})
		}
		return nil
	})
	if err != nil {
		e.storeErr(metrics.StoreRead)
		return nil, "", fmt.Errorf("listing recorded keys under prefix %q: %w", e.o.Prefix, err)
	}
	if !slices.IsSorted(inStore) {
		slices.Sort(inStore)
	}
	if len(disowned) > 0 {
		e.log.Info("keys kvsync recorded now carry another sync's record in KV; they are no longer this sync's", "keys", len(disowned), "first", disowned[0])
		e.forget(disowned)
	}
	if l != nil {
		// Keys only the listing knows as this sync's and no file maps to
		// now are recorded as listed: if they are not deleted in this
		// pass (a refusal, the keep policy), the daemon, which compares
		// later changes with its store, still knows them as its own and
		// what they hold. Keys of the tree get their records as they are
		// found unchanged or written.
		listed := map[string]state.Record{}
		for _, lk := range l.keys {
			key, rk := lk.name, lk.remoteKey
			if !rk.ours || rk.expiring {
				continue
			}
			if inStore.has(key) {
				continue
			}
			recorded++
			if present.has(key) {
				continue
			}
			rec := state.Record{Digest: rk.digest, ExpirationAt: rk.expiration, Written: e.o.Now()}
			listed[key] = rec
			if e.o.Delete != DeleteKeep {
				cands = append(cands, candidate{key: key, rec: rec})
			}
		}
		if len(listed) == 0 || e.o.DryRun {
			// Nothing to record, or a plan, which changes nothing.
		} else if err := e.o.Store.PutBatch(e.o.Scope, listed); err != nil {
			e.storeErr(metrics.StoreRecord)
			// Unrecorded, they are still this sync's by their record in KV.
			for i := range cands {
				if _, ok := listed[cands[i].key]; ok {
					cands[i].rec, cands[i].remote = state.Record{Pending: true}, true
				}
			}
		}
		slices.SortFunc(cands, func(a, b candidate) int { return strings.Compare(a.key, b.key) })
	}
	if len(present) == 0 && recorded > 0 {
		return nil, fmt.Sprintf("the tree has no files but %d keys under prefix %q were written by kvsync (a volume not mounted yet?); nothing deleted", recorded, e.o.Prefix), nil
	}
	return cands, "", nil
}

// recordListed records in the store, as listed, the keys l shows as this
// sync's that the store has no record of and the snapshot does not hold
// (see candidates).
func (e *Engine) recordListed(l *listing, present keySet) {
	if e.o.DryRun {
		return
	}
	listed := map[string]state.Record{}
	for _, lk := range l.keys {
		if !lk.ours || lk.expiring || present.has(lk.name) {
			continue
		}
		if _, ok, err := e.o.Store.Get(e.o.Scope, lk.name); err != nil || ok {
			continue
		}
		listed[lk.name] = state.Record{Digest: lk.digest, ExpirationAt: lk.expiration, Written: e.o.Now()}
	}
	if len(listed) == 0 {
		return
	}
	if err := e.o.Store.PutBatch(e.o.Scope, listed); err != nil {
		e.storeErr(metrics.StoreRecord)
	}
}

// keySet is a sorted set of keys.
type keySet []string

func (k keySet) has(key string) bool {
	_, ok := slices.BinarySearch(k, key)
	return ok
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
