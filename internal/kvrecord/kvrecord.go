// Package kvrecord is the record kvsync keeps in every key it writes: one
// reserved top-level field of the key's metadata, "_kvsync", sent in the
// same request as the value so it can never disagree with it. A listing of
// the namespace returns every key's metadata, so one listing tells which
// keys a sync wrote (the owner) and whether each still holds what the tree
// would write (the digest), with no local state.
//
// The field is a string: "1.<owner>.<digest>", where 1 is the format,
// owner is 11 characters of base64url (64 bits of a hash of the namespace
// and the prefix) and digest 22 (128 bits of a hash of the value, the
// metadata the sidecar gave and the expiration rule). A key kvsync keeps
// only until it expires (delete: expire) carries "x" for a digest: it
// matches no file, so a file that comes back is written again, and it is
// not a key of a file that went away, so it is not expired again.
//
// Readers see the sidecar's fields unchanged plus this one. A Worker that
// passes metadata on should drop it:
//
//	const { _kvsync, ...meta } = (await env.KV.getWithMetadata(key)).metadata ?? {};
package kvrecord

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Field is the reserved top-level metadata field.
const Field = "_kvsync"

const (
	format    = "1"
	ownerLen  = 11 // base64url of 8 bytes
	digestLen = 22 // base64url of 16 bytes
	expiring  = "x"
	// markLen is the length of a current mark's string.
	markLen = len(format) + 1 + ownerLen + 1 + digestLen
)

// Reserved is how many bytes the field adds to a sidecar's metadata
// object: `,"_kvsync":"<mark>"`. A key with no sidecar gets
// `{"_kvsync":"<mark>"}`, one byte fewer than an empty object plus
// Reserved.
const Reserved = len(`,"`+Field+`":""`) + markLen

// Owner names the keys of one sync: a namespace and a prefix. It comes
// from them alone, never from a host or a pod, so every process that
// publishes the same tree to the same place owns the same keys, and two
// syncs with different prefixes in one namespace own disjoint sets even
// when one prefix extends the other.
type Owner string

// OwnerOf returns the owner of the keys a sync writes under prefix in
// namespace.
func OwnerOf(namespace, prefix string) Owner {
	h := sha256.New()
	h.Write([]byte("kvsync owner\x00"))
	writeField(h, []byte(namespace))
	writeField(h, []byte(prefix))
	return Owner(base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:8]))
}

// Digest vouches for what a write sent: value, metadata and expiration
// rule.
type Digest [16]byte

// Rule is a key's expiration rule as written: a TTL in seconds or an
// absolute Unix time, at most one set (a TTL wins in the API). The time a
// TTL ends changes with every write, so it is the rule that is digested.
type Rule struct {
	TTL int64
	At  int64
}

// DigestOf digests a write: the SHA-256 of its value, its metadata as the
// sidecar gave it (compacted, without this field; nil for none) and its
// expiration rule.
func DigestOf(value [sha256.Size]byte, metadata json.RawMessage, r Rule) Digest {
	h := sha256.New()
	h.Write([]byte("kvsync digest 1\x00"))
	h.Write(value[:])
	writeField(h, metadata)
	var n [16]byte
	binary.BigEndian.PutUint64(n[:8], uint64(r.TTL))
	binary.BigEndian.PutUint64(n[8:], uint64(r.At))
	h.Write(n[:])
	var d Digest
	copy(d[:], h.Sum(nil))
	return d
}

// writeField writes b length-prefixed, so no two sequences of fields
// digest alike.
func writeField(h interface{ Write([]byte) (int, error) }, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// Mark is the field's content.
type Mark struct {
	Owner  Owner
	Digest Digest
	// Expiring marks a key whose file went away, kept until its TTL ends
	// (delete: expire); Digest is zero then.
	Expiring bool
}

// String encodes m as the field's value.
func (m Mark) String() string {
	d := expiring
	if !m.Expiring {
		d = base64.RawURLEncoding.EncodeToString(m.Digest[:])
	}
	return format + "." + string(m.Owner) + "." + d
}

// ParseMark decodes a field's value; ok is false for anything this
// version did not write.
func ParseMark(s string) (m Mark, ok bool) {
	f, rest, ok1 := strings.Cut(s, ".")
	o, d, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || f != format || len(o) != ownerLen {
		return Mark{}, false
	}
	if _, err := base64.RawURLEncoding.DecodeString(o); err != nil {
		return Mark{}, false
	}
	m.Owner = Owner(o)
	if d == expiring {
		m.Expiring = true
		return m, true
	}
	b, err := base64.RawURLEncoding.DecodeString(d)
	if err != nil || len(b) != len(m.Digest) {
		return Mark{}, false
	}
	copy(m.Digest[:], b)
	return m, true
}

// ErrReserved is a sidecar that sets the reserved field itself.
var ErrReserved = errors.New(`the top-level field "` + Field + `" is reserved for kvsync's own record`)

// Add returns metadata, a compacted JSON object or nil, with the field
// set to m, as the bytes to send. metadata must not hold the field already
// (see CheckSidecar).
func Add(metadata json.RawMessage, m Mark) json.RawMessage {
	field := `"` + Field + `":"` + m.String() + `"`
	inner := bytes.TrimSpace(metadata)
	if len(inner) < 2 || inner[0] != '{' {
		return json.RawMessage("{" + field + "}")
	}
	body := bytes.TrimSpace(inner[1 : len(inner)-1])
	out := make([]byte, 0, len(inner)+len(field)+1)
	out = append(out, '{')
	if len(body) > 0 {
		out = append(out, body...)
		out = append(out, ',')
	}
	out = append(out, field...)
	return append(out, '}')
}

// Split reads what a listing returned as a key's metadata: the mark, if a
// valid one is there, and the metadata without it (compacted, nil when
// nothing else is left), as the sidecar had it.
func Split(metadata json.RawMessage) (user json.RawMessage, m Mark, ok bool) {
	if len(bytes.TrimSpace(metadata)) == 0 || !bytes.Contains(metadata, []byte(Field)) {
		return compact(metadata), Mark{}, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(metadata, &obj); err != nil {
		return compact(metadata), Mark{}, false
	}
	raw, has := obj[Field]
	if !has {
		return compact(metadata), Mark{}, false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		m, ok = ParseMark(s)
	}
	return without(metadata), m, ok
}

// without removes the top-level field from the object metadata, keeping
// the other fields in their order and bytes.
func without(metadata json.RawMessage) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(metadata))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return compact(metadata)
	}
	var out bytes.Buffer
	out.WriteByte('{')
	n := 0
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return compact(metadata)
		}
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return compact(metadata)
		}
		if name == Field {
			continue
		}
		if n > 0 {
			out.WriteByte(',')
		}
		n++
		k, _ := marshalNoEscape(name)
		out.Write(k)
		out.WriteByte(':')
		if err := json.Compact(&out, v); err != nil {
			return compact(metadata)
		}
	}
	if n == 0 {
		return nil
	}
	out.WriteByte('}')
	return out.Bytes()
}

func marshalNoEscape(s string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func compact(m json.RawMessage) json.RawMessage {
	if len(bytes.TrimSpace(m)) == 0 {
		return nil
	}
	var b bytes.Buffer
	if json.Compact(&b, m) != nil || b.String() == "null" {
		return nil
	}
	return b.Bytes()
}

// CheckSidecar refuses sidecar metadata (a compacted JSON object) that
// sets the field, or that leaves too little room for it: with the field
// the metadata must fit in limit bytes. The error gives the numbers.
func CheckSidecar(metadata json.RawMessage, limit int) error {
	if len(metadata) == 0 {
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(metadata, &obj); err == nil {
		if _, has := obj[Field]; has {
			return ErrReserved
		}
	}
	if n := len(Add(metadata, sizing)); n > limit {
		return &BudgetError{Size: len(metadata), Limit: limit}
	}
	return nil
}

// sizing is a mark of a current key's length, to measure with.
var sizing = Mark{Owner: Owner(strings.Repeat("A", ownerLen))}

// BudgetError is sidecar metadata too large once kvsync's field is added.
type BudgetError struct {
	Size, Limit int
}

// Available is how many bytes of metadata a sidecar may hold.
func (e *BudgetError) Available() int { return e.Limit - Reserved }

func (e *BudgetError) Error() string {
	return fmt.Sprintf("metadata is %d bytes; at most %d are available because kvsync reserves %d of the %d for its %q field (record_in_metadata: false gives them back)",
		e.Size, e.Available(), Reserved, e.Limit, Field)
}
