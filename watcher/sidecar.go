package watcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/kvapi"
)

// ErrBadSidecar is wrapped by the errors of sidecars, for errors.Is.
var ErrBadSidecar = errors.New("invalid metadata sidecar")

// maxSidecarRead bounds how much of a sidecar is read, so a huge file named
// like one costs no memory: its compacted form may be at most
// kvapi.MaxMetadataBytes, so a file this large is surely not a valid one.
const maxSidecarRead = 64 << 10

// sidecarEntry is a parsed sidecar cached under its fileID. Its error is
// cached too, so an invalid sidecar is not read again until it changes.
type sidecarEntry struct {
	id   fileID
	meta json.RawMessage
	err  error
	gen  uint64 // the last full scan that used it
}

// Whether a file has a sidecar, when a directory listing already says.
type sidecarHint int

const (
	sidecarUnknown sidecarHint = iota
	sidecarAbsent
	sidecarPresent
)

// sidecarOwner maps a sidecar's relative path to its file's.
func sidecarOwner(rel string) string {
	if isSidecar(rel) {
		return strings.TrimSuffix(rel, SidecarSuffix)
	}
	return rel
}

// sidecar returns the metadata in the sidecar at rel, nil when there is
// none, or an error naming it when it is invalid. lst, when not nil, is the
// sidecar's lstat from the directory's listing: unless it is a symlink, it
// is what a lookup now would say, and is trusted instead of asked again.
// The sidecar is read beneath the root like any file of the tree: a
// symlink follows the rules of follow, and a file read is the one opened
// beneath the root, whatever the listing said.
func (w *Watcher) sidecar(rel string, lst fs.FileInfo) (json.RawMessage, error) {
	s := w.st
	abs := filepath.Join(w.opts.Root, rel)
	if lst != nil && lst.Mode()&fs.ModeSymlink != 0 {
		lst = nil // the symlink rules below look at it again
	}
	src := resolved{root: s.root, rel: rel, path: abs, info: lst}
	if lst == nil {
		fi, err := s.root.Lstat(rel)
		if err != nil {
			delete(s.sidecars, rel)
			if isGone(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
		}
		src.info = fi
		if fi.Mode()&fs.ModeSymlink != 0 {
			// The symlink rule holds for sidecars too: metadata must not be
			// read from outside the root.
			t, err := w.follow(abs)
			switch {
			case errors.Is(err, errDangling):
				delete(s.sidecars, rel)
				return nil, nil
			case errors.Is(err, errOutside):
				return nil, fmt.Errorf("%w: %s is a symlink leading outside the root", ErrBadSidecar, abs)
			case err != nil:
				return nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
			}
			src = t
		}
	}
	id, idOK := fileIDOf(src.info)
	if e, ok := s.sidecars[rel]; ok && idOK && e.id == id {
		if e.gen != s.gen {
			e.gen = s.gen
			s.sidecars[rel] = e
		}
		return e.meta, e.err
	}
	delete(s.sidecars, rel)
	meta, gone, read, err := w.readSidecar(src)
	if gone && lst != nil {
		// Removed since the listing: as a lookup now would have found.
		return nil, nil
	}
	// Cached under the identity of what was read, which may be newer
	// than the listing's.
	if read == nil {
		return meta, err
	}
	id, idOK = fileIDOf(read)
	if idOK && id.stamp().Settled(w.opts.Now()) {
		s.sidecars[rel] = sidecarEntry{id: id, meta: meta, err: err, gen: s.gen}
	}
	return meta, err
}

// readSidecar reads and parses the sidecar src, whose lstat is src.info.
// gone reports that it could not be opened because it no longer exists;
// read is the fstat of what was read, nil when nothing was.
func (w *Watcher) readSidecar(src resolved) (meta json.RawMessage, gone bool, read fs.FileInfo, err error) {
	abs, fi := src.path, src.info
	if !fi.Mode().IsRegular() {
		return nil, false, nil, fmt.Errorf("%w: %s: not a regular file", ErrBadSidecar, abs)
	}
	if fi.Size() > maxSidecarRead {
		return nil, false, nil, fmt.Errorf("%w: %s: %d bytes, far over the %d-byte limit", ErrBadSidecar, abs, fi.Size(), kvapi.MaxMetadataBytes)
	}
	f, err := w.open(src.root, src.rel)
	if err != nil {
		return nil, isGone(err), nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
	}
	defer f.Close()
	if read, err = f.Stat(); err != nil {
		return nil, false, nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
	}
	if !read.Mode().IsRegular() {
		// Replaced by a FIFO or a device since the lookup: never read.
		return nil, false, nil, fmt.Errorf("%w: %s: not a regular file", ErrBadSidecar, abs)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSidecarRead+1))
	if err != nil {
		return nil, false, nil, fmt.Errorf("%w: %s: %v", ErrBadSidecar, abs, err)
	}
	meta, err = ParseSidecar(data)
	if err == nil && w.opts.RecordInMetadata {
		if err = kvrecord.CheckSidecar(meta, kvapi.MaxMetadataBytes); err != nil {
			err = fmt.Errorf("%w: %w", ErrBadSidecar, err)
		}
	}
	if err != nil {
		return nil, false, read, fmt.Errorf("%s: %w", abs, err)
	}
	return meta, false, read, nil
}

// ParseSidecar validates the content of a metadata sidecar and returns it
// compacted, as it is to be sent. It checks only what is about the file: a
// leading UTF-8 byte order mark, which some editors write, is dropped, and
// text that is not UTF-8 or not JSON is refused with the parser's message,
// which names the offending character. What KV accepts as metadata (a JSON
// object of at most kvapi.MaxMetadataBytes once compacted) is
// kvapi.ValidateMetadata's rule, and the compacted form is its, so the bytes
// measured here are the bytes the uploader sends.
// Errors wrap ErrBadSidecar and, when kvapi refused the content, its cause
// (kvapi.ErrMetadataNotObject, kvapi.ErrMetadataTooLarge); they say what is
// wrong, not which file: callers add the name.
func ParseSidecar(data []byte) (json.RawMessage, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrBadSidecar)
	}
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("%w: not valid JSON: %v", ErrBadSidecar, err)
	}
	meta, err := kvapi.ValidateMetadata(data)
	if err == nil {
		return meta, nil
	}
	cause := err
	var ve *kvapi.ValidationError
	if errors.As(err, &ve) {
		cause = ve.Err
	}
	e := &sidecarError{msg: cause.Error(), cause: cause}
	switch {
	case errors.Is(cause, kvapi.ErrMetadataTooLarge):
		// The length is measured again only here, to say by how much.
		var buf bytes.Buffer
		_ = json.Compact(&buf, data) // valid: json.Valid said so
		e.msg = fmt.Sprintf("%d bytes compacted, over the KV limit of %d", buf.Len(), kvapi.MaxMetadataBytes)
	case errors.Is(cause, kvapi.ErrMetadataNotObject):
		e.msg = "not a JSON object"
	}
	return nil, e
}

// sidecarError is a sidecar whose content kvapi refused as metadata. Its
// text says what to fix in the file, in the words of the sidecar's other
// errors, and it matches both ErrBadSidecar and kvapi's cause. It does not
// wrap kvapi's *ValidationError, which means a request kvapi refused to
// send (the uploader and the metrics classify errors by it): no request is
// involved here, only a file to fix.
type sidecarError struct {
	msg   string
	cause error
}

func (e *sidecarError) Error() string   { return ErrBadSidecar.Error() + ": " + e.msg }
func (e *sidecarError) Unwrap() []error { return []error{ErrBadSidecar, e.cause} }
