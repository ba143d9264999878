package uploader

import (
	"errors"
	"fmt"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/metrics"
)

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
		e.storeErr(metrics.StoreIntent)
		return fmt.Errorf("recording the intent before the request (nothing sent): %w", err)
	}
	return nil
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
		e.storeErr(metrics.StoreIntent)
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
	rec := state.Record{Hash: sum, Size: size, Metadata: st.Metadata, ExpirationTTL: ttl, ExpirationAt: at, Written: now}
	if sum == st.Hash {
		// The stamp vouches for the bytes hashed, which are those sent.
		rec.Stamp = st.Stamp
	}
	return rec
}

// record stores confirmed writes, clearing their intent marks. A failure
// here loses no data: the key keeps its mark, so it is written again later
// and stays kvsync's to delete.
func (e *Engine) record(recs map[string]state.Record) {
	if len(recs) == 0 {
		return
	}
	if err := e.o.Store.PutBatch(e.o.Scope, recs); err != nil {
		e.storeErr(metrics.StoreRecord)
		e.log.Error("keys written but not recorded; they stay marked pending and will be written again", "keys", len(recs), "err", err)
	}
}

// storeErr counts a failure of the state store.
func (e *Engine) storeErr(op metrics.StoreOp) {
	if e.o.Metrics != nil {
		e.o.Metrics.StoreError(op)
	}
}

func (e *Engine) forget(keys []string) {
	if len(keys) == 0 {
		return
	}
	if err := e.o.Store.DeleteBatch(e.o.Scope, keys); err != nil {
		e.storeErr(metrics.StoreForget)
		e.log.Error("keys deleted but their records not removed; a later deletion of them repeats harmlessly", "keys", len(keys), "err", err)
	}
}
