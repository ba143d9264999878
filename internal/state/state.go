// Package state is kvsync's embedded, crash-safe record of what was last
// written successfully to each key. It lets a restart skip keys whose content
// is unchanged instead of rewriting the whole tree, which matters because
// every request counts against the account's API budget (kvapi.AccountBudget
// per kvapi.BudgetWindow), shared with everything else using the token.
//
// The store is a bbolt file with one bucket per scope ("<account>/<namespace>").
// A file that cannot be read as a store (garbage, truncated, empty, zeroed) is
// moved aside and replaced by an empty store whose Fresh reports true, so the
// caller falls back to a full reconcile instead of crash-looping on it.
//
// The files: state.go holds the Store's operations; open.go opens the file
// and recovers from a corrupt one (lock_*.go: the lock held while moving it
// aside); record.go is a Record's stored form.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kvsync/kvsync/internal/desired"
)

var (
	// ErrInUse means another process holds the state file's lock.
	ErrInUse = errors.New("in use by another kvsync process")
	// ErrCorrupt means the state file turned out to be damaged after it was
	// opened. Removing the file and restarting forces a full reconcile.
	ErrCorrupt = errors.New("state file is corrupt")
)

// Record is what was last written successfully to one key, or, with
// Pending set, that a write or deletion of the key was sent whose outcome is
// not known.
type Record struct {
	// Hash is the hex SHA-256 of the content written.
	Hash string
	Size int64
	// Metadata is the compacted JSON metadata written; nil for none.
	Metadata json.RawMessage
	// ExpirationTTL is in seconds; 0 for none.
	ExpirationTTL int64
	// ExpirationAt is in Unix seconds; 0 for none.
	ExpirationAt int64
	Written      time.Time
	// Digest, when Hash is empty, is what a listing of the namespace said
	// the key holds: the digest of its record in KV (package kvrecord),
	// which vouches for content, metadata and expiration rule together.
	// The key was not written by this process; a file with that digest is
	// unchanged.
	Digest [16]byte
	// Stamp is the stat of the file whose content Hash is, when the
	// watcher could vouch for it (desired.State.Stamp): the persisted
	// hash cache.
	Stamp desired.Stamp
	// Pending marks a write-ahead intent: a request that may change the key
	// was (or was about to be) sent and no reply confirmed it, so the key
	// may be kvsync's and its content in KV is unknown. The other fields
	// still describe the last confirmed write, if any.
	Pending bool
}

// Store is an open state file. Its methods are safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	fresh bool
	now   func() time.Time
	// version changes before and after every write transaction (Version).
	version atomic.Uint64
}

// Version is a number that differs between any two reads with a write
// transaction begun between them: a reader that kept records from an
// earlier read knows they are still what a read now would return while
// Version is unchanged.
func (s *Store) Version() uint64 { return s.version.Load() }

// update runs a write transaction between two changes of the version.
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	s.version.Add(1)
	defer s.version.Add(1)
	return s.db.Update(fn)
}

// Path is the file the store lives in.
func (s *Store) Path() string { return s.path }

// Fresh reports whether the store was missing or corrupt and has just been
// created empty: the caller must then reconcile every key against the API,
// because an empty store does not mean nothing was written.
func (s *Store) Fresh() bool { return s.fresh }

// guard turns a bbolt panic or memory fault during an operation into an error
// wrapping ErrCorrupt, so a file damaged while open does not crash the daemon.
func (s *Store) guard(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("state file %s: %w: %v", s.path, ErrCorrupt, p)
	}
}

// Get returns the record of key in scope, and false when there is none.
func (s *Store) Get(scope, key string) (r Record, ok bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(scope))
		if b == nil {
			return nil
		}
		v := b.Get([]byte(key))
		if v == nil {
			return nil
		}
		var derr error
		r, derr = decode(v)
		if derr != nil {
			return fmt.Errorf("state file %s: scope %q key %q: %w: %v", s.path, scope, key, ErrCorrupt, derr)
		}
		ok = true
		return nil
	})
	return r, ok, err
}

// GetMany returns the records of those keys in scope that have one, read in
// one transaction: cheaper than a Get per key for a batch.
func (s *Store) GetMany(scope string, keys []string) (recs map[string]Record, err error) {
	recs = make(map[string]Record)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(scope))
		if b == nil {
			return nil
		}
		for _, k := range keys {
			v := b.Get([]byte(k))
			if v == nil {
				continue
			}
			r, derr := decode(v)
			if derr != nil {
				return fmt.Errorf("state file %s: scope %q key %q: %w: %v", s.path, scope, k, ErrCorrupt, derr)
			}
			recs[k] = r
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// PutBatch records every entry of recs in one transaction, so one fsync
// covers the batch. A record without a Written time is stamped with now.
func (s *Store) PutBatch(scope string, recs map[string]Record) (err error) {
	if len(recs) == 0 {
		return nil
	}
	if scope == "" {
		return errors.New("state: empty scope")
	}
	// Keys go in in byte order: bbolt then fills each leaf page and moves
	// on, where random order splits pages all over the bucket and
	// rewrites more of them (BenchmarkPutBatchFresh10k measures it; see
	// bench/README.md for figures).
	keys := make([]string, 0, len(recs))
	keyBytes, valBytes := 0, 0
	for k, r := range recs {
		if k == "" {
			return fmt.Errorf("state: scope %q: empty key", scope)
		}
		keys = append(keys, k)
		keyBytes += len(k)
		valBytes += len(r.Hash) + len(r.Metadata) + maxEncodedFixed
	}
	slices.Sort(keys)
	// One buffer holds every encoded value and one every key, rather than
	// an allocation each; bbolt keeps a reference to each value until the
	// transaction commits, so neither is reused.
	enc := make([][]byte, len(keys))
	buf := make([]byte, 0, valBytes)
	now := s.now()
	for i, k := range keys {
		r := recs[k]
		if r.Written.IsZero() {
			r.Written = now
		}
		start := len(buf)
		buf, err = appendEncoded(buf, r)
		if err != nil {
			return fmt.Errorf("state: scope %q key %q: %w", scope, k, err)
		}
		enc[i] = buf[start:len(buf):len(buf)]
	}
	kbuf := make([]byte, 0, keyBytes)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	return s.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(scope))
		if err != nil {
			return fmt.Errorf("state file %s: scope %q: %w", s.path, scope, err)
		}
		for i, k := range keys {
			kbuf = append(kbuf, k...)
			if err := b.Put(kbuf[len(kbuf)-len(k):], enc[i]); err != nil {
				return fmt.Errorf("state file %s: scope %q key %q: %w", s.path, scope, k, err)
			}
		}
		return nil
	})
}

// DeleteBatch forgets keys in one transaction; unknown keys are ignored.
func (s *Store) DeleteBatch(scope string, keys []string) (err error) {
	if len(keys) == 0 {
		return nil
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(scope))
		if b == nil {
			return nil
		}
		for _, k := range keys {
			if k == "" {
				continue
			}
			if err := b.Delete([]byte(k)); err != nil {
				return fmt.Errorf("state file %s: scope %q key %q: %w", s.path, scope, k, err)
			}
		}
		return nil
	})
}

// ForEach calls fn for every key of scope that starts with prefix, in byte
// order (bbolt's order, bytes.Compare, which is Go's string order), inside
// one read transaction; fn must not call the Store's write methods. An
// error from fn stops the iteration and is returned.
func (s *Store) ForEach(scope, prefix string, fn func(key string, r Record) error) (err error) {
	return s.ForEachFrom(scope, prefix, "", fn)
}

// ForEachFrom is ForEach from the first key at or after from: a reader
// that takes a scope a batch at a time, each in a read transaction of its
// own, goes on where the last batch stopped, so that no transaction stays
// open for the length of a full sync (which would keep bbolt from reusing
// the pages its writes free).
func (s *Store) ForEachFrom(scope, prefix, from string, fn func(key string, r Record) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(scope))
		if b == nil {
			return nil
		}
		p := []byte(prefix)
		start := p
		if from > prefix {
			start = []byte(from)
		}
		c := b.Cursor()
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			r, derr := decode(v)
			if derr != nil {
				return fmt.Errorf("state file %s: scope %q key %q: %w: %v", s.path, scope, k, ErrCorrupt, derr)
			}
			if err := fn(string(k), r); err != nil {
				return err
			}
		}
		return nil
	})
}

// Len returns the number of keys recorded in scope.
func (s *Store) Len(scope string) (n int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	err = s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte(scope)); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n, err
}

// Close releases the file and its lock.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("state file %s: %w", s.path, err)
	}
	return nil
}
