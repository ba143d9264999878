package uploader

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
)

// expirationFields maps a desired expiration to the API's fields: TTL in
// seconds, or an absolute Unix time. TTL wins, as in the API, so only one of
// them is ever non-zero.
func expirationFields(e desired.Expiration) (ttl, at int64) {
	if e.TTL > 0 {
		return int64(e.TTL / time.Second), 0
	}
	if !e.At.IsZero() {
		return 0, e.At.Unix()
	}
	return 0, 0
}

// putOptions builds the write options of st, refusing expirations the API
// would refuse: that failure is permanent for this desired state.
func putOptions(st desired.State, now time.Time) (kvapi.PutOptions, error) {
	o := kvapi.PutOptions{Metadata: st.Metadata}
	ttl, at := expirationFields(st.Expiration)
	switch {
	case ttl > 0:
		if ttl < kvapi.MinTTLSeconds {
			return o, &kvapi.ValidationError{Field: "expiration_ttl", Key: st.Key,
				Err: fmt.Errorf("%w: %ds", kvapi.ErrTTLTooShort, ttl)}
		}
		o.ExpirationTTL = ttl
	case at > 0:
		if ahead := at - now.Unix(); ahead < kvapi.MinExpirationAheadSeconds {
			return o, &kvapi.ValidationError{Field: "expiration", Key: st.Key,
				Err: fmt.Errorf("%w: %s is %ds from now", kvapi.ErrExpirationTooSoon, st.Expiration.At.UTC().Format(time.RFC3339), ahead)}
		}
		o.Expiration = at
	}
	return o, nil
}

// unchanged reports whether rec, what was last written to st.Key, is what st
// asks for, so writing it again would change nothing. A record whose
// expiration has passed is not: the key is gone from KV although its file
// is still there. Nor is a pending one: a request whose outcome is unknown
// may have changed the key since. Nor is a state without a hash (its
// content was not read) or a record without one (what was sent is unknown).
func unchanged(st desired.State, rec state.Record, now time.Time) bool {
	if rec.Hash == "" && rec.Digest != ([16]byte{}) {
		// What a listing said the key holds (see state.Record.Digest).
		sum, ok := hashSum(st.Hash)
		return ok && !rec.Pending && kvrecord.Digest(rec.Digest) == kvrecord.DigestOf(sum, st.Metadata, rule(st)) &&
			!recordExpired(rec, now)
	}
	ttl, at := expirationFields(st.Expiration)
	return !rec.Pending && st.Hash != "" && rec.Hash == st.Hash &&
		rec.ExpirationTTL == ttl && rec.ExpirationAt == at &&
		metadataEqual(rec.Metadata, st.Metadata) &&
		!recordExpired(rec, now)
}

func recordExpired(rec state.Record, now time.Time) bool {
	if rec.ExpirationTTL > 0 && !rec.Written.IsZero() {
		return !now.Before(rec.Written.Add(time.Duration(rec.ExpirationTTL) * time.Second))
	}
	return rec.ExpirationAt > 0 && now.Unix() >= rec.ExpirationAt
}

// metadataEqual compares two metadata documents after compaction; absent
// and JSON null are the same thing (no metadata).
func metadataEqual(a, b json.RawMessage) bool {
	ca, cb := compactJSON(a), compactJSON(b)
	return bytes.Equal(ca, cb)
}

func compactJSON(m json.RawMessage) []byte {
	if len(bytes.TrimSpace(m)) == 0 {
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, m); err != nil {
		return m
	}
	if bytes.Equal(buf.Bytes(), []byte("null")) {
		return nil
	}
	return buf.Bytes()
}

// sameIntent reports whether two desired states ask for the same thing, to
// recognise a state that already failed permanently. Two writes whose
// content was not hashed may ask for different content: they are not.
func sameIntent(a, b desired.State) bool {
	if !a.Deleted && a.Hash == "" || !b.Deleted && b.Hash == "" {
		return false
	}
	return a.Key == b.Key && a.Deleted == b.Deleted && a.Hash == b.Hash && a.Path == b.Path &&
		a.Expiration.Equal(b.Expiration) && metadataEqual(a.Metadata, b.Metadata)
}

// errGrew means a file meant for a bulk write is now larger than the bulk
// threshold; it goes through a streamed write instead.
var errGrew = errors.New("file grew beyond the bulk threshold")

// sentValue wraps a Value and hashes the bytes each attempt actually reads,
// so the record names what the API received, not what the watcher saw.
type sentValue struct {
	v   kvapi.Value
	mu  sync.Mutex
	cur *hashReader
}

func (s *sentValue) Size() int64 { return s.v.Size() }

func (s *sentValue) Open() (io.ReadCloser, error) {
	r, err := s.v.Open()
	if err != nil {
		return nil, err
	}
	hr := &hashReader{r: r, h: sha256.New()}
	s.mu.Lock()
	s.cur = hr
	s.mu.Unlock()
	return hr, nil
}

// sent returns the hash and length of the last attempt's bytes, and whether
// that attempt read the value to its end.
func (s *sentValue) sent() (sum string, n int64, complete bool) {
	s.mu.Lock()
	hr := s.cur
	s.mu.Unlock()
	if hr == nil {
		return "", 0, false
	}
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return hex.EncodeToString(hr.h.Sum(nil)), hr.n, hr.eof
}

type hashReader struct {
	r   io.ReadCloser
	mu  sync.Mutex // the transport may read while the caller inspects the sum
	h   hash.Hash
	n   int64
	eof bool
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.mu.Lock()
	h.h.Write(p[:n])
	h.n += int64(n)
	if err == io.EOF {
		h.eof = true
	}
	h.mu.Unlock()
	return n, err
}

func (h *hashReader) Close() error { return h.r.Close() }

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
