package watcher

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/kvsync/kvsync/internal/beneath"
)

// racyWindow is how old a file's timestamps must be before its hash is
// cached. File times tick coarsely (a jiffy locally, worse on network file
// systems), so a file rewritten with the same size within one tick of being
// hashed would keep its identity; like git's "racily clean" entries, such
// files are hashed again next time instead of trusted.
const racyWindow = 2 * time.Second

// fileID is what a cached hash or sidecar is trusted under: while a file's
// fileID is unchanged its content is taken to be, so it is not read again
// (fileIDOf says why these fields suffice).
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

type hashEntry struct {
	id   fileID
	hash string
}

// hash returns the content hash of a resolved file and the identity of the
// file it read (see desired.State.File), from the cache when its identity
// proves it unchanged, else by streaming it through SHA-256.
//
// A file written or replaced while it is read is not an error: its hash
// is returned but never cached. Holding such a file back would keep a file
// that is always being written (a log) from ever being published, and the
// hash does no harm: the write that raced produces an event that
// re-evaluates the file, and the uploader records the hash of the bytes it
// actually sends, not this one.
func (w *Watcher) hash(rel string, r resolved) (string, int64, beneath.Identity, error) {
	s := w.st
	var none beneath.Identity
	id, idOK := fileIDOf(r.info)
	if e, ok := s.hashes[rel]; ok && idOK && e.id == id {
		bid, _ := beneath.IdentityOf(r.info)
		return e.hash, id.size, bid, nil
	}
	delete(s.hashes, rel)
	f, err := w.open(r.root, r.rel)
	if err != nil {
		if isGone(err) || errors.Is(err, beneath.ErrSymlink) {
			return "", 0, none, err
		}
		return "", 0, none, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	defer f.Close()
	// The descriptor, not the path, is what is hashed: its fstat is the
	// identity the sink checks before publishing.
	fi, err := f.Stat()
	if err != nil {
		return "", 0, none, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", 0, none, errNotRegular
	}
	before, beforeOK := fileIDOf(fi)
	bid, _ := beneath.IdentityOf(fi)
	if fi.Size() > w.opts.MaxFileSize {
		return "", fi.Size(), none, fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrTooLarge, r.path, fi.Size(), w.opts.MaxFileSize)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.LimitReader(f, w.opts.MaxFileSize+1), s.buf)
	if err != nil {
		return "", 0, none, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	if n > w.opts.MaxFileSize {
		return "", n, none, fmt.Errorf("%w: %s grew past the limit of %d bytes", ErrTooLarge, r.path, w.opts.MaxFileSize)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if after, err := f.Stat(); err == nil && beforeOK {
		aid, _ := fileIDOf(after)
		settled := w.opts.Now().Add(-racyWindow).UnixNano()
		if aid == before && before.size == n && before.mtime < settled && before.ctime < settled {
			s.hashes[rel] = hashEntry{id: before, hash: sum}
		}
	}
	return sum, n, bid, nil
}
