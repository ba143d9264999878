package state

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
)

// record is Record's stored form: short names keep a large store small.
type record struct {
	Hash          string          `json:"h"`
	Size          int64           `json:"s,omitempty"`
	Metadata      json.RawMessage `json:"m,omitempty"`
	ExpirationTTL int64           `json:"t,omitempty"`
	ExpirationAt  int64           `json:"e,omitempty"`
	Written       int64           `json:"w,omitempty"` // Unix nanoseconds
	// Stamp is [dev, ino, size, mtime, ctime], omitted when zero.
	Stamp []int64 `json:"st,omitempty"`
	// Digest is base64url, omitted when zero.
	Digest string `json:"g,omitempty"`
	// Pending is omitted when false, so clean records keep the encoding
	// they had before the field existed and old records decode as clean.
	Pending bool `json:"p,omitempty"`
}

func encode(r Record) ([]byte, error) {
	rec := record{
		Hash:          r.Hash,
		Size:          r.Size,
		ExpirationTTL: r.ExpirationTTL,
		ExpirationAt:  r.ExpirationAt,
		Pending:       r.Pending,
	}
	if r.Digest != ([16]byte{}) {
		rec.Digest = base64.RawURLEncoding.EncodeToString(r.Digest[:])
	}
	if !r.Stamp.IsZero() {
		rec.Stamp = stampFields(r.Stamp)
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
	if !plainJSONString(r.Hash) || r.Digest != ([16]byte{}) {
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
	if !r.Stamp.IsZero() {
		buf = append(buf, `,"st":[`...)
		for i, v := range stampFields(r.Stamp) {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendInt(buf, v, 10)
		}
		buf = append(buf, ']')
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

// stampFields is a stamp's stored form. Device and inode numbers fit in an
// int64's range in practice; they round-trip bit for bit either way.
func stampFields(s desired.Stamp) []int64 {
	return []int64{int64(s.Dev), int64(s.Ino), s.Size, s.Mtime, s.Ctime}
}

func decode(v []byte) (Record, error) {
	if r, ok := decodePlain(v); ok {
		return r, nil
	}
	return decodeJSON(v)
}

// decodeJSON decodes any stored record with encoding/json.
func decodeJSON(v []byte) (Record, error) {
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
	if len(rec.Stamp) == 5 {
		f := rec.Stamp
		r.Stamp = desired.Stamp{Dev: uint64(f[0]), Ino: uint64(f[1]), Size: f[2], Mtime: f[3], Ctime: f[4]}
	}
	if rec.Digest != "" {
		d, err := base64.RawURLEncoding.DecodeString(rec.Digest)
		if err != nil || len(d) != len(r.Digest) {
			return Record{}, fmt.Errorf("digest %q: not 16 bytes of base64url", rec.Digest)
		}
		copy(r.Digest[:], d)
	}
	if len(rec.Metadata) > 0 {
		r.Metadata = append(json.RawMessage(nil), rec.Metadata...)
	}
	if rec.Written != 0 {
		r.Written = time.Unix(0, rec.Written)
	}
	return r, nil
}

// decodePlain decodes a record in the exact form appendEncoded writes for
// the usual record (a plain hash, no metadata, no digest), without
// encoding/json's reflection, which was most of a no-op sync's time spent
// reading the store. ok is false for anything else, which decode then
// reads the general way.
func decodePlain(v []byte) (r Record, ok bool) {
	p := plainParser{b: v}
	if !p.lit(`{"h":"`) {
		return r, false
	}
	end := bytes.IndexByte(p.b[p.i:], '"')
	if end < 0 {
		return r, false
	}
	hash := p.b[p.i : p.i+end]
	if !plainJSONString(string(hash)) {
		return r, false
	}
	r.Hash = string(hash)
	p.i += end + 1
	if p.lit(`,"s":`) && !p.int(&r.Size) {
		return r, false
	}
	if p.lit(`,"t":`) && !p.int(&r.ExpirationTTL) {
		return r, false
	}
	if p.lit(`,"e":`) && !p.int(&r.ExpirationAt) {
		return r, false
	}
	var w int64
	if p.lit(`,"w":`) {
		if !p.int(&w) {
			return r, false
		}
		if w != 0 {
			r.Written = time.Unix(0, w)
		}
	}
	if p.lit(`,"st":[`) {
		var f [5]int64
		for i := range f {
			if i > 0 && !p.lit(",") || !p.int(&f[i]) {
				return r, false
			}
		}
		if !p.lit("]") {
			return r, false
		}
		r.Stamp = desired.Stamp{Dev: uint64(f[0]), Ino: uint64(f[1]), Size: f[2], Mtime: f[3], Ctime: f[4]}
	}
	if p.lit(`,"p":true`) {
		r.Pending = true
	}
	return r, p.lit("}") && p.i == len(p.b)
}

type plainParser struct {
	b []byte
	i int
}

// lit consumes s if it comes next.
func (p *plainParser) lit(s string) bool {
	if !bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		return false
	}
	p.i += len(s)
	return true
}

// int consumes a JSON integer (no leading zeros, as JSON requires).
func (p *plainParser) int(out *int64) bool {
	j := p.i
	if j < len(p.b) && p.b[j] == '-' {
		j++
	}
	digits := j
	for j < len(p.b) && p.b[j] >= '0' && p.b[j] <= '9' {
		j++
	}
	if j-digits > 1 && p.b[digits] == '0' {
		return false
	}
	n, err := strconv.ParseInt(string(p.b[p.i:j]), 10, 64)
	if err != nil {
		return false
	}
	*out, p.i = n, j
	return true
}
