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
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DefaultTimeout is how long Open waits for another process's lock on the
// file. A second kvsync on the same state directory fails with ErrInUse after
// it instead of hanging.
const DefaultTimeout = time.Second

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
	// Pending marks a write-ahead intent: a request that may change the key
	// was (or was about to be) sent and no reply confirmed it, so the key
	// may be kvsync's and its content in KV is unknown. The other fields
	// still describe the last confirmed write, if any.
	Pending bool
}

// record is Record's stored form: short names keep a large store small.
type record struct {
	Hash          string          `json:"h"`
	Size          int64           `json:"s,omitempty"`
	Metadata      json.RawMessage `json:"m,omitempty"`
	ExpirationTTL int64           `json:"t,omitempty"`
	ExpirationAt  int64           `json:"e,omitempty"`
	Written       int64           `json:"w,omitempty"` // Unix nanoseconds
	// Pending is omitted when false, so clean records keep the encoding
	// they had before the field existed and old records decode as clean.
	Pending bool `json:"p,omitempty"`
}

// Options configure Open.
type Options struct {
	// Logger receives the warning about a corrupt file; nil discards.
	Logger *slog.Logger
	// Timeout bounds the wait for the file lock; 0 means DefaultTimeout.
	Timeout time.Duration
	// Now names the moved-aside corrupt file and stamps records written
	// without a time; nil means time.Now.
	Now func() time.Time
}

// Store is an open state file. Its methods are safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	fresh bool
	now   func() time.Time
}

// Open opens the state file at path, creating it (mode 0600, its directory
// 0700) when missing. A corrupt file is moved to "<path>.corrupt-<unix>" and
// replaced; a file locked by another process yields an error wrapping
// ErrInUse, and the file is left alone.
func Open(path string, opts Options) (*Store, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("state directory for %s: %w", path, err)
	}

	fresh := false
	switch fi, err := os.Stat(path); {
	case errors.Is(err, fs.ErrNotExist):
		fresh = true
	case err != nil:
		return nil, fmt.Errorf("state file %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("state file %s is not a regular file", path)
	case fi.Size() == 0:
		// bbolt would silently initialise an empty file; an empty file is a
		// store that lost its content, so it is handled as corrupt. Under
		// the lock it is checked again: a kvsync starting at this very
		// moment may just be initialising it.
		moved, err := moveAside(path, opts, logger, errors.New("file is empty"), func(fi os.FileInfo) bool { return fi.Size() == 0 })
		if err != nil {
			return nil, err
		}
		fresh = moved
	}

	db, err := openBolt(path, opts.Timeout)
	var ce *corruptError
	if errors.As(err, &ce) {
		if _, err := moveAside(path, opts, logger, ce.err, nil); err != nil {
			return nil, err
		}
		fresh = true
		db, err = openBolt(path, opts.Timeout)
	}
	if err != nil {
		return nil, err
	}
	return &Store{db: db, path: path, fresh: fresh, now: opts.Now}, nil
}

// initialMmapSize is the address space the store's file is mapped with
// from the start. bbolt maps the file anew whenever it outgrows the
// mapping, doubling it from 32 KiB: on a first publish that is a remap
// (with a copy of every key and value the transaction holds out of the old
// mapping) every few thousand records. Mapped but untouched pages cost
// neither memory nor disk, so 64-bit systems map enough for about a
// million records at once. On Windows bbolt would instead grow the file
// itself to this size, so there the mapping grows as before.
func initialMmapSize() int {
	switch {
	case runtime.GOOS == "windows":
		return 0
	case strconv.IntSize == 32:
		return 32 << 20
	}
	return 256 << 20
}

// allocSize is how far past its need the file grows at a time; see its use.
const allocSize = 1 << 20

// corruptError marks a file whose content bbolt could not use, as opposed to
// one that could not be opened or locked.
type corruptError struct{ err error }

func (e *corruptError) Error() string { return e.err.Error() }

// openBolt opens and validates the file. bbolt trusts the page structure it
// reads through mmap, so a damaged file can make it panic or fault; faults
// are turned into panics (SetPanicOnFault) and recovered here.
func openBolt(path string, timeout time.Duration) (db *bolt.DB, err error) {
	var file *os.File
	var openErr error
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		// A half-opened DB is unreachable: its mapping stays leaked, which
		// is acceptable for an event this rare, but its lock must go so the
		// file can be moved aside and replaced.
		if db != nil {
			closeQuietly(db)
		}
		if file != nil {
			unlockFile(file)
			_ = file.Close() // harmless if Close above got that far
		}
		db, err = nil, &corruptError{fmt.Errorf("bbolt panicked: %v", p)}
	}()

	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: timeout,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			file, openErr = os.OpenFile(name, flag, perm)
			return file, openErr
		},
		InitialMmapSize: initialMmapSize(),
	})
	switch {
	case err == nil:
		// With the mapping larger than AllocSize, bbolt grows the file by
		// AllocSize past what it needs (16 MiB by default, which would
		// make even a tiny store that large); each step costs a truncate
		// and an fsync, so a step this size keeps them few.
		db.AllocSize = allocSize
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("state file %s is %w (lock not acquired within %s)", path, ErrInUse, timeout)
	case openErr != nil:
		return nil, fmt.Errorf("state file %s: %w", path, err)
	default:
		return nil, &corruptError{err}
	}
	if verr := validate(db, file); verr != nil {
		closeQuietly(db)
		_ = file.Close()
		return nil, &corruptError{verr}
	}
	return db, nil
}

// validate reads the whole store once, so damage shows up now, while it can
// still be handled by starting afresh, rather than in the middle of a sync.
func validate(db *bolt.DB, file *os.File) error {
	fi, err := file.Stat()
	if err != nil {
		return err
	}
	return db.View(func(tx *bolt.Tx) error {
		// A truncated file ends before the pages its meta page claims; those
		// pages would fault on access.
		if tx.Size() > fi.Size() {
			return fmt.Errorf("file is truncated: %d bytes, expected at least %d", fi.Size(), tx.Size())
		}
		err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return fmt.Errorf("scope %q: unexpected nested bucket %q", name, k)
				}
				var r record
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("scope %q key %q: %w", name, k, err)
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		for cerr := range tx.Check() {
			if err == nil {
				err = cerr
			}
		}
		return err
	})
}

func closeQuietly(db *bolt.DB) {
	defer func() { _ = recover() }()
	_ = db.Close()
}

// moveAside renames a damaged file out of the way, keeping it for
// inspection. It holds the file's lock meanwhile, so a file another kvsync
// has open is left alone (ErrInUse); still, if not nil, re-checks under the
// lock that the file is still damaged, and moveAside reports whether it moved.
func moveAside(path string, opts Options, logger *slog.Logger, cause error, still func(os.FileInfo) bool) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("state file %s: %w", path, err)
	}
	defer f.Close() // releases the lock, after the rename
	if err := lockFile(f, opts.Timeout); errors.Is(err, ErrInUse) {
		return false, fmt.Errorf("state file %s is %w (lock not acquired within %s)", path, ErrInUse, opts.Timeout)
	} else if err != nil {
		return false, fmt.Errorf("state file %s: lock: %w", path, err)
	}
	if still != nil {
		fi, err := f.Stat()
		if err != nil {
			return false, fmt.Errorf("state file %s: %w", path, err)
		}
		if !still(fi) {
			return false, nil
		}
	}
	base := path + ".corrupt-" + strconv.FormatInt(opts.Now().Unix(), 10)
	dst := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		}
		dst = base + "-" + strconv.Itoa(i)
	}
	if err := os.Rename(path, dst); err != nil {
		return false, fmt.Errorf("state file %s is unreadable (%v) and could not be moved aside: %w", path, cause, err)
	}
	logger.Warn("state file is unreadable; moved it aside and starting with an empty store (a full reconcile follows)",
		"file", path, "moved_to", dst, "err", cause)
	return true, nil
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
	return s.db.Update(func(tx *bolt.Tx) error {
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
	return s.db.Update(func(tx *bolt.Tx) error {
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
// order, inside one read transaction; fn must not call the Store's write
// methods. An error from fn stops the iteration and is returned.
func (s *Store) ForEach(scope, prefix string, fn func(key string, r Record) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(&err)
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(scope))
		if b == nil {
			return nil
		}
		p := []byte(prefix)
		c := b.Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
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

func encode(r Record) ([]byte, error) {
	rec := record{
		Hash:          r.Hash,
		Size:          r.Size,
		ExpirationTTL: r.ExpirationTTL,
		ExpirationAt:  r.ExpirationAt,
		Pending:       r.Pending,
	}
	if !r.Written.IsZero() {
		rec.Written = r.Written.UnixNano()
	}
	if len(r.Metadata) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, r.Metadata); err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
		rec.Metadata = buf.Bytes()
	}
	// json.Marshal would rewrite <, > and & in the metadata as \u escapes,
	// and the stored bytes must equal the compacted metadata that was sent.
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

// maxEncodedFixed bounds the bytes appendEncoded adds to a record's hash
// and metadata: field names, quotes and braces (42) and four int64 (20
// each). It only sizes a buffer, which grows if a record needs more.
const maxEncodedFixed = 42 + 4*20

// appendEncoded appends r's stored form to buf: the same bytes as encode,
// written directly for the usual record (a hex hash), since encoding/json's
// reflection was a large part of recording a batch. Any other record goes
// through encode. After an error buf's content is unspecified.
func appendEncoded(buf []byte, r Record) ([]byte, error) {
	if !plainJSONString(r.Hash) {
		v, err := encode(r)
		return append(buf, v...), err
	}
	buf = append(buf, `{"h":"`...)
	buf = append(buf, r.Hash...)
	buf = append(buf, '"')
	if r.Size != 0 {
		buf = append(buf, `,"s":`...)
		buf = strconv.AppendInt(buf, r.Size, 10)
	}
	if len(r.Metadata) > 0 {
		buf = append(buf, `,"m":`...)
		var err error
		if buf, err = appendCompact(buf, r.Metadata); err != nil {
			return buf, fmt.Errorf("metadata: %w", err)
		}
	}
	if r.ExpirationTTL != 0 {
		buf = append(buf, `,"t":`...)
		buf = strconv.AppendInt(buf, r.ExpirationTTL, 10)
	}
	if r.ExpirationAt != 0 {
		buf = append(buf, `,"e":`...)
		buf = strconv.AppendInt(buf, r.ExpirationAt, 10)
	}
	if !r.Written.IsZero() {
		if w := r.Written.UnixNano(); w != 0 {
			buf = append(buf, `,"w":`...)
			buf = strconv.AppendInt(buf, w, 10)
		}
	}
	if r.Pending {
		buf = append(buf, `,"p":true`...)
	}
	return append(buf, '}'), nil
}

// plainJSONString reports whether s needs no escaping inside a JSON string.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// appendCompact appends the compacted form of the JSON text m.
func appendCompact(buf []byte, m []byte) ([]byte, error) {
	b := bytes.NewBuffer(buf)
	if err := json.Compact(b, m); err != nil {
		return buf, err
	}
	return b.Bytes(), nil
}

func decode(v []byte) (Record, error) {
	var rec record
	if err := json.Unmarshal(v, &rec); err != nil {
		return Record{}, err
	}
	r := Record{
		Hash:          rec.Hash,
		Size:          rec.Size,
		ExpirationTTL: rec.ExpirationTTL,
		ExpirationAt:  rec.ExpirationAt,
		Pending:       rec.Pending,
	}
	if len(rec.Metadata) > 0 {
		r.Metadata = append(json.RawMessage(nil), rec.Metadata...)
	}
	if rec.Written != 0 {
		r.Written = time.Unix(0, rec.Written)
	}
	return r, nil
}
