package kvapi

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// bulkItem is one pair of a bulk write, framed: head is `[{"key":…,"value":"`
// (or starting with a comma), tail closes the value string and carries the
// optional fields. The value is encoded while it is read, so the body never
// holds a second, encoded copy of it.
type bulkItem struct {
	head, tail []byte
	value      []byte
	b64        bool
}

// bulkChunk is how much encoded value a bulkBody produces at a time; a
// multiple of 4 so that base64 chunks (3 raw bytes -> 4) need no padding.
const bulkChunk = 32 << 10

// bulkBody streams the JSON array of a bulk write.
type bulkBody struct {
	items   []bulkItem
	i       int
	stage   int // 0 head, 1 value, 2 tail
	off     int // bytes of items[i].value consumed
	pending []byte
	closed  bool
	scratch []byte
}

func newBulkBody(items []bulkItem) *bulkBody {
	return &bulkBody{items: items}
}

func (b *bulkBody) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(b.pending) > 0 {
			k := copy(p[n:], b.pending)
			b.pending = b.pending[k:]
			n += k
			continue
		}
		if !b.fill() {
			break
		}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// fill sets pending to the next piece of the body; false at the end.
func (b *bulkBody) fill() bool {
	for {
		if b.i == len(b.items) {
			if b.closed {
				return false
			}
			b.closed = true
			b.pending = []byte{']'}
			return true
		}
		it := &b.items[b.i]
		switch b.stage {
		case 0:
			b.pending = it.head
			b.stage = 1
			return true
		case 1:
			if b.off >= len(it.value) {
				b.stage = 2
				continue
			}
			if b.scratch == nil {
				b.scratch = make([]byte, bulkChunk)
			}
			if it.b64 {
				raw := it.value[b.off:min(len(it.value), b.off+bulkChunk/4*3)]
				base64.StdEncoding.Encode(b.scratch, raw)
				b.pending = b.scratch[:base64.StdEncoding.EncodedLen(len(raw))]
				b.off += len(raw)
			} else {
				out, used := appendJSONEscaped(b.scratch[:0], it.value[b.off:], bulkChunk)
				b.pending = out
				b.off += used
			}
			return true
		default:
			b.pending = it.tail
			b.i++
			b.stage = 0
			b.off = 0
			return true
		}
	}
}

func (b *bulkBody) Close() error { return nil }

// jsonExtra is how many bytes escaping adds to each byte inside a JSON
// string: 0 for bytes that pass unchanged (multibyte UTF-8 included), 1 for
// the two-byte escapes, 5 for \u00XX.
var jsonExtra = func() (t [256]uint8) {
	for c := range 0x20 {
		t[c] = 5
	}
	for _, c := range []byte{'"', '\\', '\n', '\r', '\t'} {
		t[c] = 1
	}
	return t
}()

// plainWords reports how many leading bytes of src, in whole 8-byte words,
// need no escaping. A bulk write's values are mostly plain text, so testing
// eight bytes at a time (no byte below 0x20, none equal to '"' or '\\') is
// what makes encoding them cheap next to reading them.
func plainWords(src []byte) int {
	const ones = 0x0101010101010101
	const highs = 0x8080808080808080
	i := 0
	for ; i+8 <= len(src); i += 8 {
		x := binary.LittleEndian.Uint64(src[i:])
		// hasLess(x, n) and hasZero(x) from "Bit Twiddling Hacks": a high
		// bit marks a byte below n, or a byte equal to the XORed constant.
		ctl := (x - ones*0x20) &^ x & highs
		q := x ^ (ones * '"')
		bs := x ^ (ones * '\\')
		if ctl|((q-ones)&^q&highs)|((bs-ones)&^bs&highs) != 0 {
			break
		}
	}
	return i
}

// appendJSONEscaped appends src escaped as the inside of a JSON string to
// dst, stopping before dst would grow past limit, and reports how many bytes
// of src it consumed. Multibyte UTF-8 sequences pass through unchanged (they
// may be split across calls; only single ASCII bytes are ever escaped).
func appendJSONEscaped(dst, src []byte, limit int) ([]byte, int) {
	const hex = "0123456789abcdef"
	i := 0
	for i < len(src) && len(dst)+6 <= limit {
		// The longest run of bytes that pass unchanged and still fit.
		run := src[i:min(len(src), i+limit-len(dst))]
		j := plainWords(run)
		for j < len(run) && jsonExtra[run[j]] == 0 {
			j++
		}
		dst = append(dst, run[:j]...)
		i += j
		if j == len(run) || len(dst)+6 > limit {
			continue // src consumed or no room for an escape: the loop condition ends it
		}
		switch c := src[i]; c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
	}
	return dst, i
}

// jsonEscapedLen is the length appendJSONEscaped produces for all of src.
func jsonEscapedLen(src []byte) int64 {
	n := int64(len(src))
	for len(src) > 0 {
		k := plainWords(src)
		src = src[k:]
		if len(src) == 0 {
			break
		}
		// At most one word's worth byte by byte, then words again.
		for _, c := range src[:min(len(src), 8)] {
			n += int64(jsonExtra[c])
		}
		src = src[min(len(src), 8):]
	}
	return n
}

// appendJSONString appends s as a complete JSON string.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	src := []byte(s)
	for len(src) > 0 {
		var used int
		dst, used = appendJSONEscaped(dst, src, len(dst)+6*len(src)+6)
		src = src[used:]
	}
	return append(dst, '"')
}

// The JSON around one pair of a bulk body, written by newBulkItem and
// counted by bulkPairLen.
const (
	bulkKeyField    = `{"key":`
	bulkValueField  = `,"value":"`
	bulkBase64Field = `,"base64":true`
	bulkTTLField    = `,"expiration_ttl":`
	bulkExpField    = `,"expiration":`
	bulkMetaField   = `,"metadata":`
)

// bulkBase64 decides how a value travels in a bulk body: a value that is not
// valid UTF-8 cannot be a JSON string, so it goes base64-encoded.
func bulkBase64(value []byte) bool { return !utf8.Valid(value) }

// encodeBulk validates every pair at time now and frames it, and returns the
// exact length of the body the items make (what BulkPairLen adds up).
func encodeBulk(pairs []BulkPair, now time.Time) ([]bulkItem, int64, error) {
	items := make([]bulkItem, len(pairs))
	size := int64(1) // the closing ']'
	for i, p := range pairs {
		if err := ValidateKey(p.Key); err != nil {
			return nil, 0, err
		}
		if len(p.Value) > MaxValueBytes {
			return nil, 0, &ValidationError{Field: "value", Key: p.Key, Err: fmt.Errorf("%w: %d bytes", ErrValueTooLarge, len(p.Value))}
		}
		meta, err := ValidateMetadata(p.Metadata)
		if err != nil {
			return nil, 0, withKey(err, p.Key)
		}
		if err := ValidateExpiration(p.Expiration, p.ExpirationTTL, now); err != nil {
			return nil, 0, withKey(err, p.Key)
		}
		p.Metadata = meta
		items[i] = newBulkItem(p, i == 0)
		size += bulkPairLen(p, items[i].b64, int64(len(meta)))
	}
	return items, size, nil
}

// newBulkItem frames one validated pair, whose metadata is compacted; first
// says whether it opens the array.
func newBulkItem(p BulkPair, first bool) bulkItem {
	b64 := bulkBase64(p.Value)
	head := make([]byte, 0, len(p.Key)+24)
	if first {
		head = append(head, '[')
	} else {
		head = append(head, ',')
	}
	head = append(head, bulkKeyField...)
	head = appendJSONString(head, p.Key)
	head = append(head, bulkValueField...)

	tail := make([]byte, 0, len(p.Metadata)+64)
	tail = append(tail, '"')
	if b64 {
		tail = append(tail, bulkBase64Field...)
	}
	switch {
	case p.ExpirationTTL > 0:
		tail = append(tail, bulkTTLField...)
		tail = strconv.AppendInt(tail, p.ExpirationTTL, 10)
	case p.Expiration > 0:
		tail = append(tail, bulkExpField...)
		tail = strconv.AppendInt(tail, p.Expiration, 10)
	}
	if p.Metadata != nil {
		tail = append(tail, bulkMetaField...)
		tail = append(tail, p.Metadata...)
	}
	tail = append(tail, '}')
	return bulkItem{head: head, tail: tail, value: p.Value, b64: b64}
}

// BulkPairLen is exactly the number of bytes BulkPut's request body spends on
// p, for a pair BulkPut accepts: a separator ('[' before the first pair, ','
// before the others), the key and value as JSON strings (the value
// base64-encoded when it is not valid UTF-8, see BulkPair), the expiration
// and the metadata as BulkPut sends it, compacted. A body is one byte (its
// closing ']') longer than the sum of its pairs' BulkPairLen, and BulkPut
// refuses a body longer than MaxBulkRequestBytes.
//
// It reads every byte of the value: whether it is valid UTF-8 decides its
// encoding, and each byte that needs escaping lengthens it.
func BulkPairLen(p BulkPair) int64 {
	return bulkPairLen(p, bulkBase64(p.Value), compactedLen(p.Metadata))
}

// BulkPairLenBound is at least BulkPairLen of any pair with a key, value and
// metadata of these lengths, without reading them: each byte escaped at its
// longest (\u00XX) or the value base64-encoded, whichever is longer, and the
// longest expiration. A batch far from the body limit can be measured with
// it instead of a pass over every value; near the limit, BulkPairLen.
func BulkPairLenBound(keyLen, valueLen, metadataLen int) int64 {
	n := int64(1+len(bulkKeyField)+2+len(bulkValueField)+1+1) + maxEscape*int64(keyLen)
	n += max(maxEscape*int64(valueLen), int64(base64.StdEncoding.EncodedLen(valueLen)+len(bulkBase64Field)))
	n += int64(max(len(bulkTTLField), len(bulkExpField)) + len("-9223372036854775808"))
	if metadataLen > 0 {
		n += int64(len(bulkMetaField) + metadataLen)
	}
	return n
}

// maxEscape is the most bytes one byte of a JSON string is written as: a
// control character as \u00XX.
const maxEscape = 6

// bulkPairLen is BulkPairLen for a value whose encoding is already decided
// and metadata whose compacted length is known; it mirrors newBulkItem.
func bulkPairLen(p BulkPair, b64 bool, metaLen int64) int64 {
	n := int64(1 + len(bulkKeyField) + 2 + len(bulkValueField) + 1 + 1) // separator, key quotes, value's closing quote, '}'
	n += jsonEscapedLen([]byte(p.Key))
	if b64 {
		n += int64(base64.StdEncoding.EncodedLen(len(p.Value)) + len(bulkBase64Field))
	} else {
		n += jsonEscapedLen(p.Value)
	}
	var digits [20]byte
	switch {
	case p.ExpirationTTL > 0:
		n += int64(len(bulkTTLField) + len(strconv.AppendInt(digits[:0], p.ExpirationTTL, 10)))
	case p.Expiration > 0:
		n += int64(len(bulkExpField) + len(strconv.AppendInt(digits[:0], p.Expiration, 10)))
	}
	if metaLen > 0 {
		n += int64(len(bulkMetaField)) + metaLen
	}
	return n
}

// compactedLen is the length of the JSON text m once json.Compact dropped
// its insignificant whitespace (what ValidateMetadata returns), or 0 for an
// empty m, which BulkPut sends as no metadata at all.
func compactedLen(m []byte) int64 {
	var n int64
	inString, escaped := false, false
	for _, c := range m {
		switch {
		case inString:
			n++
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		default:
			n++
			inString = c == '"'
		}
	}
	return n
}
