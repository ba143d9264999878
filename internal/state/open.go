package state

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DefaultTimeout is how long Open waits for another process's lock on the
// file. A second kvsync on the same state directory fails with ErrInUse after
// it instead of hanging.
const DefaultTimeout = time.Second

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
//
// It touches every page of the file, and a mapped page once touched counts
// in the process's RSS: the pages are dropped as it goes (every
// validateRelease) and at its end, so opening a large store (a million
// records is about 330 MB) does not make the peak of a sync.
func validate(db *bolt.DB, file *os.File) error {
	fi, err := file.Stat()
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	released := make(chan struct{})
	go func() {
		defer close(released)
		t := time.NewTicker(validateRelease)
		defer t.Stop()
		for {
			select {
			case <-stop:
				_ = releasePages(file.Name())
				return
			case <-t.C:
				_ = releasePages(file.Name())
			}
		}
	}()
	defer func() {
		close(stop)
		<-released
	}()
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
				// decode, not encoding/json alone: its hand-written path
				// takes a record only if encoding/json would
				// (FuzzDecodePlain), at a fraction of the cost, which
				// matters here since every record is read at each open.
				if _, err := decode(v); err != nil {
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

// validateRelease is how often validate drops the pages it read.
const validateRelease = 50 * time.Millisecond

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
