package uploader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// takeBulkPut collects queued bulk-eligible writes into one batch bounded by
// pairs and estimated bytes; with onlyFull, only a batch that reached a
// bound. Content is read later, by the job.
func (e *Engine) takeBulkPut(onlyFull bool) *job {
	full := false
	var batch []*item
	var bytes int64
	limit := e.o.BulkMaxPairs
	for _, it := range e.queue {
		if it.taken || it.cat != catSmall {
			continue
		}
		l := limit
		if it.split > 0 && it.split < l {
			l = it.split
		}
		if len(batch)+1 > l {
			continue
		}
		est := it.st.Size + int64(len(it.st.Key)+len(it.st.Metadata)+kvrecord.Reserved) + pairOverhead
		if len(batch) > 0 && bytes+est > e.o.BulkMaxBytes {
			full = true
			continue
		}
		batch = append(batch, it)
		bytes += est
		limit = l
		if len(batch) == limit {
			full = true
			break
		}
	}
	if len(batch) < 2 || onlyFull && !full {
		return nil
	}
	for _, it := range batch {
		e.take(it)
	}
	e.queue = slices.DeleteFunc(e.queue, func(it *item) bool { return it.taken })
	e.bulkHeld += bytes
	return &job{kind: jobBulkPut, items: batch, held: bytes}
}

// prepared is one pair of a bulk request being built; the pair itself is
// at the same index of the request's pairs. It is kept small: a batch of
// thousands of small files holds one per file until the reply.
type prepared struct {
	it   *item
	size int64
	sum  [sha256.Size]byte // of the value sent, to record once written
	// stamp vouches for the value read (smallReader.stamp); zero if not.
	stamp desired.Stamp
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
		data, err := e.readBatch(rd, st)
		if errors.Is(err, errGrew) {
			it.split = 1 // streamed alone from now on
			rs = append(rs, result{it: it, requeue: true})
			continue
		}
		if err != nil {
			rs = append(rs, e.writeFailure(ctx, it, err, true))
			continue
		}
		sum := sha256.Sum256(data)
		opts.Metadata = e.marked(st, sum)
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
		b := prepared{it: it, size: int64(len(data)), sum: sum, stamp: rd.stamp}
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
		if !b.stamp.IsZero() {
			rec.Stamp = b.stamp
		}
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
