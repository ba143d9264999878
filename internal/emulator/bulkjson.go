package emulator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Bulk bodies are read whole before they are decoded, so that a body over
// the limit is refused as too large whatever it holds, and then decoded one
// element at a time by a json.Decoder, so that a failure names the item
// and an over-long array is refused at its 10,001st element.

// bulkPair is one element of a bulk write body. The pointers tell an absent
// (or null) field from a zero one. Its name shows in the messages of
// mistyped fields ("Go struct field bulkPair.value").
type bulkPair struct {
	Key           *string         `json:"key"`
	Value         *string         `json:"value"`
	Expiration    *float64        `json:"expiration"`
	ExpirationTTL *float64        `json:"expiration_ttl"`
	Metadata      json.RawMessage `json:"metadata"`
	Base64        bool            `json:"base64"`
}

// bulkTooLarge answers a bulk body over limit bytes.
func bulkTooLarge(what string, limit int64) *apiError {
	return tooLarge(fmt.Sprintf("request too large: a %s body must be at most %d bytes", what, limit))
}

// readBulkBody reads a bulk request body of at most limit bytes.
func readBulkBody(r *http.Request, limit int64, what string) ([]byte, *apiError) {
	// A declared length sizes the buffer (one spare byte, so that reading
	// up to EOF does not grow it): io.ReadAll would grow it past the room
	// the body gate reserved. An absent or excessive length does not.
	size := int64(64 << 10)
	if r.ContentLength >= 0 && r.ContentLength <= limit {
		size = r.ContentLength + 1
	}
	buf := make([]byte, 0, size)
	lr := io.LimitReader(r.Body, limit+1)
	var err error
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		var n int
		n, err = lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break
		}
	}
	if int64(len(buf)) > limit {
		return nil, bulkTooLarge(what, limit)
	}
	if err != io.EOF {
		return nil, badRequest(10029, "invalid request: reading the body: "+err.Error())
	}
	return buf, nil
}

// decodeBulkArray walks the top-level JSON array of a bulk body, calling fn
// per element (fn decodes it from dec), and enforces the element count
// limit. Whatever follows the closing bracket is never looked at.
func decodeBulkArray(body []byte, what string, fn func(i int, dec *json.Decoder) *apiError) *apiError {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return badRequest(10029, "invalid request: the "+what+" body must be a JSON array")
	}
	for i := 0; dec.More(); i++ {
		if i >= MaxBulkPairs {
			return badRequest(10029, fmt.Sprintf("invalid request: a %s body holds at most %d items", what, MaxBulkPairs))
		}
		if aerr := fn(i, dec); aerr != nil {
			return aerr
		}
	}
	if _, err := dec.Token(); err != nil {
		return badRequest(10029, "invalid request: malformed JSON array: "+err.Error())
	}
	return nil
}

// decodeBulkPut decodes and validates a bulk write body, stopping at the
// first item that fails.
func decodeBulkPut(body []byte, now time.Time) ([]mutation, *apiError) {
	var muts []mutation
	aerr := decodeBulkArray(body, "bulk write", func(i int, dec *json.Decoder) *apiError {
		var p bulkPair
		if err := dec.Decode(&p); err != nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d: %v", i, err))
		}
		m, aerr := p.mutation(i, now)
		if aerr != nil {
			return aerr
		}
		muts = append(muts, m)
		return nil
	})
	if aerr != nil {
		return nil, aerr
	}
	return muts, nil
}

// mutation validates the i-th item of a bulk write.
func (p *bulkPair) mutation(i int, now time.Time) (mutation, *apiError) {
	if p.Key == nil {
		return mutation{}, badRequest(10029, fmt.Sprintf("invalid request: item %d has no key", i))
	}
	key := *p.Key
	if aerr := checkKey(key); aerr != nil {
		return mutation{}, aerr
	}
	if p.Value == nil {
		return mutation{}, badRequest(10012, fmt.Sprintf("malformed value: item %d (%q) has no value", i, key))
	}
	var value []byte
	if p.Base64 {
		v, err := base64.StdEncoding.DecodeString(*p.Value)
		if err != nil {
			return mutation{}, badRequest(10012, fmt.Sprintf("malformed value: item %d (%q) is not valid base64", i, key))
		}
		value = v
	} else {
		value = []byte(*p.Value)
	}
	if len(value) > MaxValueBytes {
		return mutation{}, tooLarge(fmt.Sprintf("value too large: %q holds %d bytes, the limit is %d", key, len(value), MaxValueBytes))
	}
	var meta []byte
	if len(p.Metadata) > 0 {
		m, aerr := normalizeMetadata(p.Metadata)
		if aerr != nil {
			return mutation{}, aerr
		}
		meta = m
	}
	exp, aerr := expiry(p.ExpirationTTL, p.Expiration, jsonNum(p.ExpirationTTL), jsonNum(p.Expiration), now)
	if aerr != nil {
		return mutation{}, aerr
	}
	return mutation{kind: recPut, key: key, value: value, meta: meta, exp: exp}, nil
}

func jsonNum(f *float64) string {
	if f == nil {
		return ""
	}
	return strconv.FormatFloat(*f, 'f', -1, 64)
}

// decodeBulkDelete decodes and validates a bulk delete body: an array of
// key names.
func decodeBulkDelete(body []byte) ([]mutation, *apiError) {
	var muts []mutation
	aerr := decodeBulkArray(body, "bulk delete", func(i int, dec *json.Decoder) *apiError {
		// Through a pointer, so that null is told from "": both are
		// refused, but with different messages.
		var k *string
		if err := dec.Decode(&k); err != nil || k == nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d is not a key name string", i))
		}
		if aerr := checkKey(*k); aerr != nil {
			return aerr
		}
		muts = append(muts, mutation{kind: recDelete, key: *k})
		return nil
	})
	if aerr != nil {
		return nil, aerr
	}
	return muts, nil
}
