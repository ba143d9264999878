package kvapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// ValidateKey checks a key name against the API's rules: not empty, at most
// MaxKeyBytes bytes (the docs count bytes; the OpenAPI maxLength counts
// characters, which lets multibyte names through that the server refuses),
// not exactly "." or "..", and valid UTF-8.
func ValidateKey(key string) error {
	var err error
	switch {
	case key == "":
		err = ErrKeyEmpty
	case len(key) > MaxKeyBytes:
		err = ErrKeyTooLong
	case key == "." || key == "..":
		err = ErrKeyReserved
	case !utf8.ValidString(key):
		err = ErrKeyInvalidUTF8
	default:
		return nil
	}
	return &ValidationError{Field: "key", Key: key, Err: err}
}

// ValidateMetadata checks that m is a JSON object of at most MaxMetadataBytes
// once compacted, and returns the compacted form, which is what must be sent
// so the server measures the same bytes. An empty m means "no metadata" and
// returns nil; the literal null is refused, because it is not an object.
func ValidateMetadata(m json.RawMessage) (json.RawMessage, error) {
	if len(m) == 0 {
		return nil, nil
	}
	fail := func(err error) (json.RawMessage, error) {
		return nil, &ValidationError{Field: "metadata", Err: err}
	}
	if !utf8.Valid(m) {
		return fail(fmt.Errorf("%w: not valid UTF-8", ErrMetadataNotObject))
	}
	var buf bytes.Buffer
	buf.Grow(len(m))
	if err := json.Compact(&buf, m); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrMetadataNotObject, err))
	}
	out := buf.Bytes()
	if out[0] != '{' {
		return fail(ErrMetadataNotObject)
	}
	if len(out) > MaxMetadataBytes {
		return fail(fmt.Errorf("%w: %d bytes compacted", ErrMetadataTooLarge, len(out)))
	}
	return json.RawMessage(out), nil
}

// ValidateExpiration checks an absolute expiration exp (seconds since the
// epoch, 0 for none) and a ttl (seconds, 0 for none) at time now. A ttl, when
// set, must be at least MinTTLSeconds and wins: exp is then not sent and not
// checked. Otherwise exp must be at least MinExpirationAheadSeconds ahead of
// now: the server refuses a nearer expiry of either kind.
func ValidateExpiration(exp, ttl int64, now time.Time) error {
	if ttl != 0 {
		if ttl < MinTTLSeconds {
			return &ValidationError{Field: "expiration_ttl", Err: fmt.Errorf("%w: %d", ErrTTLTooShort, ttl)}
		}
		return nil
	}
	if exp != 0 {
		if earliest := now.Unix() + MinExpirationAheadSeconds; exp < earliest {
			return &ValidationError{Field: "expiration", Err: fmt.Errorf("%w: %d is %d s ahead", ErrExpirationTooSoon, exp, exp-now.Unix())}
		}
	}
	return nil
}

// withKey names key in a ValidationError produced by a validator that did
// not know it.
func withKey(err error, key string) error {
	if ve, ok := err.(*ValidationError); ok && ve.Key == "" {
		ve.Key = key
	}
	return err
}

func checkNamespace(ns, key string) error {
	if ns == "" {
		return &ValidationError{Field: "namespace", Key: key, Err: ErrNamespaceEmpty}
	}
	return nil
}
