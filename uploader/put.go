package uploader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

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
	f, err := e.openWrite(st)
	if err != nil {
		return e.writeFailure(ctx, it, err, true)
	}
	var sum [sha256.Size]byte
	if e.o.Owner != "" {
		// The record in the metadata goes out before the value, so the
		// value's hash must be known first: the scan's, else read now.
		if sum, err = e.contentSum(st, f); err != nil {
			f.Close()
			return e.writeFailure(ctx, it, err, true)
		}
		opts.Metadata = e.marked(st, sum)
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
	sent, n, complete := sv.sent()
	if !complete {
		// The API confirmed a body we did not see end; record no hash so
		// the next comparison rewrites the key rather than trust a guess.
		sent = ""
	}
	if e.o.Owner != "" && sent != hex.EncodeToString(sum[:]) {
		// The file changed in place while it was read: KV holds bytes its
		// record does not vouch for, which a later listing would take for
		// the file's if it changed back. Its intent mark stays (no
		// record), and it is written again now, hashed anew.
		e.log.Debug("file changed while it was sent; writing it again", "key", st.Key, "path", st.Path)
		it.st.Hash = ""
		if it.attempts++; it.attempts < maxAttempts {
			return result{it: it, requeue: true}
		}
		return e.writeFailure(ctx, it, fmt.Errorf("%w: %s changed while it was sent, %d times", beneath.ErrChanged, st.Path, it.attempts), true)
	}
	if st.Hash != "" && sent != st.Hash {
		e.log.Debug("file changed after it was hashed; recorded the bytes actually sent", "key", st.Key, "path", st.Path)
	}
	e.record(map[string]state.Record{st.Key: newRecord(st, sent, n, now)})
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
		e.storeErr(metrics.StoreRead)
		return rec, ok, result{it: it, out: outcome{kind: outFailed, err: fmt.Errorf("reading the state store: %w", err)}, retry: true}, true
	}
	if ok && !it.force && unchanged(st, rec, now) {
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

// contentSum is the SHA-256 of the content of f, the checked descriptor of
// st: the scan's hash when it has one (a change since is caught once the
// bytes sent are hashed), else f read through and rewound.
func (e *Engine) contentSum(st desired.State, f *os.File) ([sha256.Size]byte, error) {
	if sum, ok := hashSum(st.Hash); ok {
		return sum, nil
	}
	var sum [sha256.Size]byte
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, st.File.Size+1))
	if err != nil {
		return sum, fmt.Errorf("reading %s: %w", st.Path, err)
	}
	if n != st.File.Size {
		return sum, errShort(st, int(n))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return sum, fmt.Errorf("reading %s: %w", st.Path, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
