package uploader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

type jobKind int

const (
	jobPut jobKind = iota
	jobBulkPut
	jobDelete
	jobBulkDelete
	jobExpire
	jobKeep
)

// job is one request's worth of keys, all marked in flight.
type job struct {
	kind  jobKind
	items []*item
	// held is the estimated value bytes a bulk write holds in memory,
	// counted in Engine.bulkHeld while it runs.
	held int64
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

// runJob makes the job's request and returns one result per item.
func (e *Engine) runJob(ctx context.Context, j *job) []result {
	switch j.kind {
	case jobPut:
		return []result{e.putOne(ctx, j.items[0])}
	case jobBulkPut:
		return e.putBulk(ctx, j.items)
	case jobExpire:
		return []result{e.expireOne(ctx, j.items[0])}
	case jobKeep:
		return e.keep(j.items)
	case jobDelete:
		return []result{e.deleteOne(ctx, j.items[0])}
	default:
		return e.deleteBulk(ctx, j.items)
	}
}

func settled(it *item, k outKind) result { return result{it: it, out: outcome{kind: k}} }

// putOne streams one file with a single PUT.
func (e *Engine) putOne(ctx context.Context, it *item) result {
	st := it.st
	now := e.o.Now()
	opts, err := putOptions(st, now)
	if err != nil {
		return e.writeFailure(ctx, it, err, true)
	}
	prev, had, r, done := e.precheck(it, now)
	if done {
		return r
	}
	if e.beforeRead != nil {
		e.beforeRead([]desired.State{st})
	}
	// Opened and checked before the intent mark: a file that cannot be
	// opened (unreadable, or never read by the watcher, see
	// desired.State.Hash) or is not the one scanned fails here, unsent
	// and unmarked. The first attempt sends this descriptor; a retry
	// opens and checks the file again.
	f, err := openTree(st)
	if err != nil {
		return e.writeFailure(ctx, it, err, true)
	}
	tv, v := newTreeValue(st, f)
	defer tv.close()
	if err := validWrite(st.Key, opts.Metadata, v.Size()); err != nil {
		return e.writeFailure(ctx, it, err, true)
	}
	if err := e.intend(marks(now, keyRecord{st.Key, prev, had})); err != nil {
		return e.intentFailure(it, err)
	}
	sv := &sentValue{v: v}
	if err := e.o.KV.PutValue(ctx, e.o.Namespace, st.Key, sv, opts); err != nil {
		if refused(err) {
			e.unmark(keyRecord{st.Key, prev, had})
		}
		return e.writeFailure(ctx, it, err, true)
	}
	sum, n, complete := sv.sent()
	if !complete {
		// The API confirmed a body we did not see end; record no hash so
		// the next comparison rewrites the key rather than trust a guess.
		sum = ""
	}
	if st.Hash != "" && sum != st.Hash {
		e.log.Debug("file changed after it was hashed; recorded the bytes actually sent", "key", st.Key, "path", st.Path)
	}
	e.record(map[string]state.Record{st.Key: newRecord(st, sum, n, now)})
	return result{it: it, out: outcome{kind: outWritten, bytes: n}}
}

// precheck settles a write that needs no request: its state is what was
// last written, or this is a dry run. Otherwise it returns the key's record
// (ok false: none), from which the intent mark is made.
func (e *Engine) precheck(it *item, now time.Time) (rec state.Record, ok bool, r result, done bool) {
	rec, ok, err := e.o.Store.Get(e.o.Scope, it.st.Key)
	return e.precheckRecord(it, now, rec, ok, err)
}

// precheckRecord is precheck given the key's record as read from the store.
func (e *Engine) precheckRecord(it *item, now time.Time, rec state.Record, ok bool, err error) (state.Record, bool, result, bool) {
	st := it.st
	if err != nil {
		return rec, ok, result{it: it, out: outcome{kind: outFailed, err: fmt.Errorf("reading the state store: %w", err)}, retry: true}, true
	}
	if ok && unchanged(st, rec, now) {
		return rec, ok, settled(it, outUnchanged), true
	}
	if e.o.DryRun {
		e.log.Info("dry run: would write", "key", st.Key, "path", st.Path, "bytes", st.Size)
		return rec, ok, settled(it, outPlanned), true
	}
	return rec, ok, result{}, false
}

// validWrite makes the checks kvapi makes before it sends a write (the
// expiration is checked by putOptions), so a write it would refuse without
// sending anything gets no intent mark.
func validWrite(key string, metadata json.RawMessage, size int64) error {
	if err := kvapi.ValidateKey(key); err != nil {
		return err
	}
	if size > kvapi.MaxValueBytes {
		return &kvapi.ValidationError{Field: "value", Key: key, Err: fmt.Errorf("%w: %d bytes", kvapi.ErrValueTooLarge, size)}
	}
	if _, err := kvapi.ValidateMetadata(metadata); err != nil {
		var ve *kvapi.ValidationError
		if errors.As(err, &ve) && ve.Key == "" {
			ve.Key = key
		}
		return err
	}
	return nil
}

// keyRecord is a key about to be sent in a request with its record before
// it (had false: none).
type keyRecord struct {
	key string
	rec state.Record
	had bool
}

// marks returns the intent marks of keys about to be sent: each key's record
// with Pending set, or for a key without one a bare mark. A record that is a
// mark already needs none. A mark keeps the record's Hash and Written, which
// a full sync's planned deletion compares, so retrying that deletion is not
// mistaken for a newer write.
func marks(now time.Time, krs ...keyRecord) map[string]state.Record {
	m := make(map[string]state.Record, len(krs))
	for _, kr := range krs {
		addMark(m, now, kr)
	}
	return m
}

// addMark adds kr's intent mark to m, if it needs one (see marks).
func addMark(m map[string]state.Record, now time.Time, kr keyRecord) {
	switch {
	case kr.had && kr.rec.Pending:
	case kr.had:
		kr.rec.Pending = true
		m[kr.key] = kr.rec
	default:
		m[kr.key] = state.Record{Pending: true, Written: now}
	}
}

// intend stores intent marks in one transaction before their request is
// sent (write-ahead). A request can take effect at the server while its
// reply is lost, and the retries then fail; without the mark, a new key
// written that way would have no record, so it would never be deleted, and
// a key with a record would keep a record of content it no longer holds, so
// it would never be rewritten. A mark is never "unchanged" and always makes
// the key kvsync's to delete; only a confirmed write clears it, a confirmed
// deletion removes it, and a failed request leaves it, whatever happened at
// the server.
func (e *Engine) intend(recs map[string]state.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := e.o.Store.PutBatch(e.o.Scope, recs); err != nil {
		return fmt.Errorf("recording the intent before the request (nothing sent): %w", err)
	}
	return nil
}

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

// unmark takes back the intent marks of writes that were refused: the keys
// return to the records they had before, or to none. Left marked, a
// refused key would count as kvsync's to delete, so a key someone else
// wrote, which kvsync only tried to overwrite, would be deleted along with
// the local file. If the store refuses, the marks stay: the safe side, as
// for any failed request.
func (e *Engine) unmark(krs ...keyRecord) {
	restore := make(map[string]state.Record, len(krs))
	var drop []string
	for _, kr := range krs {
		if kr.had {
			restore[kr.key] = kr.rec
		} else {
			drop = append(drop, kr.key)
		}
	}
	var err error
	if len(restore) > 0 {
		err = e.o.Store.PutBatch(e.o.Scope, restore)
	}
	if len(drop) > 0 {
		err = errors.Join(err, e.o.Store.DeleteBatch(e.o.Scope, drop))
	}
	if err != nil {
		e.log.Warn("write refused, but the state store kept its intent marks; the keys stay kvsync's to delete", "keys", len(krs), "err", err)
	}
}

// intentFailure settles a key whose request was not sent because its intent
// could not be recorded: sending it unrecorded could leave KV holding
// content kvsync does not know of.
func (e *Engine) intentFailure(it *item, err error) result {
	e.log.Warn("state store refused the intent mark; request not sent, retrying later",
		"key", it.st.Key, "path", it.st.Path, "err", err, "retry_in", e.o.RetryBackoff)
	return result{it: it, out: outcome{kind: outFailed, err: err}, retry: true}
}

func newRecord(st desired.State, sum string, size int64, now time.Time) state.Record {
	ttl, at := expirationFields(st.Expiration)
	return state.Record{Hash: sum, Size: size, Metadata: st.Metadata, ExpirationTTL: ttl, ExpirationAt: at, Written: now}
}

// record stores confirmed writes, clearing their intent marks. A failure
// here loses no data: the key keeps its mark, so it is written again later
// and stays kvsync's to delete.
func (e *Engine) record(recs map[string]state.Record) {
	if len(recs) == 0 {
		return
	}
	if err := e.o.Store.PutBatch(e.o.Scope, recs); err != nil {
		e.log.Error("keys written but not recorded; they stay marked pending and will be written again", "keys", len(recs), "err", err)
	}
}

func (e *Engine) forget(keys []string) {
	if len(keys) == 0 {
		return
	}
	if err := e.o.Store.DeleteBatch(e.o.Scope, keys); err != nil {
		e.log.Error("keys deleted but their records not removed; a later deletion of them repeats harmlessly", "keys", len(keys), "err", err)
	}
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
			m.FilesSkipped.WithLabelValues("unreadable").Inc()
		}
		return result{it: it, out: outcome{kind: outHeldBack, err: err}}
	case errors.Is(err, kvapi.ErrValueSizeMismatch) && it.attempts+1 < maxAttempts:
		// The file changed while it was sent; send its new content.
		it.attempts++
		e.log.Debug("file changed while it was sent; sending it again", "key", st.Key, "path", st.Path)
		return result{it: it, requeue: true}
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

// prepared is one pair of a bulk request being built; the pair itself is
// at the same index of the request's pairs. It is kept small: a batch of
// thousands of small files holds one per file until the reply.
type prepared struct {
	it   *item
	size int64
	sum  [sha256.Size]byte // of the value sent, to record once written
	// prev is the key's record before its intent mark, nil when it had
	// none (always, on a first publish), restored if the request is refused.
	prev *state.Record
}

// putBulk reads the batch's files now (so only the batches being sent are
// in memory, see Engine.bulkHeld) and writes them in one bulk request.
func (e *Engine) putBulk(ctx context.Context, items []*item) []result {
	now := e.o.Now()
	rs := make([]result, 0, len(items))
	batch := make([]prepared, 0, len(items))
	pairs := make([]kvapi.BulkPair, 0, len(items))
	intents := make(map[string]state.Record, len(items))
	var raw int64
	enc := int64(1) // the body's closing ']'
	lookup := e.batchLookup(items)
	if e.beforeRead != nil {
		sts := make([]desired.State, len(items))
		for i, it := range items {
			sts[i] = it.st
		}
		e.beforeRead(sts)
	}
	rd := newSmallReader()
	for _, it := range items {
		st := it.st
		opts, err := putOptions(st, now)
		if err != nil {
			rs = append(rs, e.writeFailure(ctx, it, err, true))
			continue
		}
		prev, had, err := lookup(st.Key)
		prev, had, settledNow, done := e.precheckRecord(it, now, prev, had, err)
		if done {
			rs = append(rs, settledNow)
			continue
		}
		data, err := rd.read(st, e.o.BulkThreshold)
		if errors.Is(err, errGrew) {
			it.split = 1 // streamed alone from now on
			rs = append(rs, result{it: it, requeue: true})
			continue
		}
		if err != nil {
			rs = append(rs, e.writeFailure(ctx, it, err, true))
			continue
		}
		if err := validWrite(st.Key, opts.Metadata, int64(len(data))); err != nil {
			// Refused alone, before the batch is marked and sent.
			rs = append(rs, e.writeFailure(ctx, it, err, true))
			continue
		}
		pair := kvapi.BulkPair{Key: st.Key, Value: data, Metadata: opts.Metadata, Expiration: opts.Expiration, ExpirationTTL: opts.ExpirationTTL}
		r := int64(len(data)+len(st.Key)+len(opts.Metadata)) + pairOverhead
		// The bound needs no pass over the value; only near the limit (never
		// with the default BulkMaxBytes) is the exact length worth one.
		n := kvapi.BulkPairLenBound(len(st.Key), len(data), len(opts.Metadata))
		if enc+n > kvapi.MaxBulkRequestBytes {
			n = kvapi.BulkPairLen(pair)
		}
		if len(batch) > 0 && (raw+r > e.o.BulkMaxBytes || enc+n > kvapi.MaxBulkRequestBytes) {
			// Larger than its size said: it goes in a later batch.
			rs = append(rs, result{it: it, requeue: true})
			continue
		}
		raw, enc = raw+r, enc+n
		b := prepared{it: it, size: int64(len(data)), sum: sha256.Sum256(data)}
		if had {
			b.prev = &prev
		}
		batch = append(batch, b)
		pairs = append(pairs, pair)
		addMark(intents, now, keyRecord{st.Key, prev, had})
	}
	rd.close() // not held while the request is out
	if len(batch) == 0 {
		return rs
	}
	err := e.intend(intents)
	intents = nil
	if err != nil {
		for _, b := range batch {
			rs = append(rs, e.intentFailure(b.it, err))
		}
		return rs
	}
	res, err := e.o.KV.BulkPut(ctx, e.o.Namespace, pairs)
	for i := range pairs {
		// The values are the bulk of a batch's memory: let them go now.
		pairs[i].Value = nil
	}
	if err != nil {
		if ctx.Err() == nil && refused(err) {
			krs := make([]keyRecord, len(batch))
			for i, b := range batch {
				krs[i] = keyRecord{key: b.it.st.Key}
				if b.prev != nil {
					krs[i].rec, krs[i].had = *b.prev, true
				}
			}
			e.unmark(krs...)
		}
		return append(rs, e.bulkFailure(ctx, batch, err)...)
	}
	bad := make(map[string]bool, len(res.Unsuccessful))
	for _, k := range res.Unsuccessful {
		bad[k] = true
	}
	recs := make(map[string]state.Record, len(batch))
	for _, b := range batch {
		if bad[b.it.st.Key] {
			rs = append(rs, e.unsuccessful(b.it, kvapi.OpBulkPut))
			continue
		}
		rec := newRecord(b.it.st, hex.EncodeToString(b.sum[:]), b.size, now)
		recs[b.it.st.Key] = rec
		rs = append(rs, result{it: b.it, out: outcome{kind: outWritten, bytes: rec.Size}})
	}
	e.record(recs)
	return rs
}

// batchLookup reads the records of items' keys, in one go when the Store
// can (manyGetter), and returns the function precheck's read is made with.
// A batch read that fails falls back to a read per key.
func (e *Engine) batchLookup(items []*item) func(key string) (state.Record, bool, error) {
	single := func(key string) (state.Record, bool, error) { return e.o.Store.Get(e.o.Scope, key) }
	mg, ok := e.o.Store.(manyGetter)
	if !ok {
		return single
	}
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.st.Key
	}
	recs, err := mg.GetMany(e.o.Scope, keys)
	if err != nil {
		return single
	}
	return func(key string) (state.Record, bool, error) {
		r, ok := recs[key]
		return r, ok, nil
	}
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

// ownRecord returns the record of a key to delete, or settles the deletion
// when the key is not kvsync's or was written again since it was planned.
func (e *Engine) ownRecord(it *item) (state.Record, *result) {
	key := it.st.Key
	rec, ok, err := e.o.Store.Get(e.o.Scope, key)
	if err != nil {
		return rec, &result{it: it, out: outcome{kind: outFailed, err: fmt.Errorf("reading the state store: %w", err)}, retry: true}
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
	if rec.Pending {
		m, err := e.o.KV.GetMetadata(ctx, e.o.Namespace, key)
		if kvapi.StatusCode(err) == http.StatusNotFound {
			e.forget([]string{key})
			return settled(it, outExpired) // gone since it was read
		}
		if err != nil {
			return e.deleteFailure(ctx, it, err, true)
		}
		opts.Metadata = compactJSON(m)
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
