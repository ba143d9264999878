package watcher

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/kvsync/kvsync/internal/beneath"
	"github.com/kvsync/kvsync/internal/desired"
)

// fileID is what a cached hash or sidecar is trusted under: while a file's
// fileID is unchanged its content is taken to be, so it is not read again
// (fileIDOf says why these fields suffice).
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

// cachedHash returns the hash of a resolved file when its stat proves it
// unchanged: from the watcher's cache, else from the sink's record of the
// key (Options.Recorded), which persists that cache across processes.
func (w *Watcher) cachedHash(key, rel string, r resolved) (string, int64, beneath.Identity, desired.Stamp, bool) {
	s := w.st
	id, idOK := fileIDOf(r.info)
	if !idOK {
		return "", 0, beneath.Identity{}, desired.Stamp{}, false
	}
	if e, ok := s.hashes[rel]; ok && e.id == id {
		if e.gen != s.gen {
			e.gen = s.gen
			s.hashes[rel] = e
		}
		bid, _ := beneath.IdentityOf(r.info)
		return e.hash, id.size, bid, id.stamp(), true
	}
	delete(s.hashes, rel)
	if w.opts.Recorded != nil {
		if stamp, sum, ok := w.opts.Recorded(key); ok && !stamp.IsZero() && stamp == id.stamp() {
			bid, _ := beneath.IdentityOf(r.info)
			return sum, id.size, bid, stamp, true
		}
	}
	return "", 0, beneath.Identity{}, desired.Stamp{}, false
}

// stamp is id as the sink persists it.
func (id fileID) stamp() desired.Stamp {
	return desired.Stamp{Dev: id.dev, Ino: id.ino, Size: id.size, Mtime: id.mtime, Ctime: id.ctime}
}

type hashEntry struct {
	id   fileID
	hash string
	gen  uint64 // the last full scan that used it
}

// hash returns the content hash of a resolved file and the identity of the
// file it read (see desired.State.File) by streaming it through SHA-256;
// the caller asked cachedHash first.
//
// A file written or replaced while it is read is not an error: its hash
// is returned but never cached. Holding such a file back would keep a file
// that is always being written (a log) from ever being published, and the
// hash does no harm: the write that raced produces an event that
// re-evaluates the file, and the uploader records the hash of the bytes it
// actually sends, not this one.
//
// A hash comes back with a stamp (desired.Stamp) when the file's times
// were old enough to be trusted.
func (w *Watcher) hash(rel string, r resolved) (string, int64, beneath.Identity, desired.Stamp, error) {
	s := w.st
	var none beneath.Identity
	var noStamp desired.Stamp
	f, err := w.open(r.root, r.rel)
	if err != nil {
		if isGone(err) || errors.Is(err, beneath.ErrSymlink) {
			return "", 0, none, noStamp, err
		}
		return "", 0, none, noStamp, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	defer f.Close()
	// The descriptor, not the path, is what is hashed: its fstat is the
	// identity the sink checks before publishing.
	fi, err := f.Stat()
	if err != nil {
		return "", 0, none, noStamp, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", 0, none, noStamp, errNotRegular
	}
	before, beforeOK := fileIDOf(fi)
	bid, _ := beneath.IdentityOf(fi)
	if fi.Size() > w.opts.MaxFileSize {
		return "", fi.Size(), none, noStamp, fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrTooLarge, r.path, fi.Size(), w.opts.MaxFileSize)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.LimitReader(f, w.opts.MaxFileSize+1), s.buf)
	if err != nil {
		return "", 0, none, noStamp, fmt.Errorf("%w: %s: %v", ErrUnreadable, r.path, err)
	}
	if n > w.opts.MaxFileSize {
		return "", n, none, noStamp, fmt.Errorf("%w: %s grew past the limit of %d bytes", ErrTooLarge, r.path, w.opts.MaxFileSize)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	stamp := noStamp
	if after, err := f.Stat(); err == nil && beforeOK {
		aid, _ := fileIDOf(after)
		if aid == before && before.size == n && before.stamp().Settled(w.opts.Now()) {
			// A sink that records stamps is the cache (Options.Recorded):
			// an entry per file here as well would grow with the tree.
			if w.opts.Recorded == nil {
				s.hashes[rel] = hashEntry{id: before, hash: sum, gen: s.gen}
			}
			stamp = before.stamp()
		}
	}
	return sum, n, bid, stamp, nil
}
