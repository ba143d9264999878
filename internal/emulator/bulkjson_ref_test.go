package emulator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"
)

// This file keeps the encoding/json bulk decoding the emulator used before
// bulkjson.go, verbatim apart from taking an io.Reader instead of the
// request: it is the reference the fast parser must agree with. The struct
// must stay named bulkPair, because the type errors the fast parser
// reproduces name it.

// bulkPair is one element of a bulk write body. Pointers tell absent from zero.
type bulkPair struct {
	Key           *string         `json:"key"`
	Value         *string         `json:"value"`
	Expiration    *float64        `json:"expiration"`
	ExpirationTTL *float64        `json:"expiration_ttl"`
	Metadata      json.RawMessage `json:"metadata"`
	Base64        bool            `json:"base64"`
}

// countingReader counts bytes read so the 100 MB bulk limit can be told
// apart from a syntax error.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// refDecodeArray streams a JSON array from the body, calling fn per element,
// and enforces the request size and element count limits.
func refDecodeArray(body io.Reader, limit int64, what string, fn func(i int, dec *json.Decoder) *apiError) *apiError {
	cr := &countingReader{r: io.LimitReader(body, limit+1)}
	dec := json.NewDecoder(cr)
	tooBig := func() *apiError {
		if cr.n > limit {
			return tooLarge(fmt.Sprintf("request too large: a %s body must be at most %d bytes", what, limit))
		}
		return nil
	}
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('[') {
		if a := tooBig(); a != nil {
			return a
		}
		return badRequest(10029, "invalid request: the "+what+" body must be a JSON array")
	}
	for i := 0; dec.More(); i++ {
		if i >= MaxBulkPairs {
			return badRequest(10029, fmt.Sprintf("invalid request: a %s body holds at most %d items", what, MaxBulkPairs))
		}
		if aerr := fn(i, dec); aerr != nil {
			if a := tooBig(); a != nil {
				return a
			}
			return aerr
		}
	}
	if _, err := dec.Token(); err != nil {
		if a := tooBig(); a != nil {
			return a
		}
		return badRequest(10029, "invalid request: malformed JSON array: "+err.Error())
	}
	io.Copy(io.Discard, cr)
	return tooBig()
}

// refDecodeBulkPut is the old handleBulkPut up to applyBulk.
func refDecodeBulkPut(body io.Reader, limit int64, now time.Time) ([]mutation, *apiError) {
	var muts []mutation
	aerr := refDecodeArray(body, limit, "bulk write", func(i int, dec *json.Decoder) *apiError {
		var p bulkPair
		if err := dec.Decode(&p); err != nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d: %v", i, err))
		}
		if p.Key == nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d has no key", i))
		}
		if aerr := checkKey(*p.Key); aerr != nil {
			return aerr
		}
		if p.Value == nil {
			return badRequest(10012, fmt.Sprintf("malformed value: item %d (%q) has no value", i, *p.Key))
		}
		value := []byte(*p.Value)
		if p.Base64 {
			dv, err := base64.StdEncoding.DecodeString(*p.Value)
			if err != nil {
				return badRequest(10012, fmt.Sprintf("malformed value: item %d (%q) is not valid base64", i, *p.Key))
			}
			value = dv
		}
		if len(value) > MaxValueBytes {
			return tooLarge(fmt.Sprintf("value too large: %q holds %d bytes, the limit is %d", *p.Key, len(value), MaxValueBytes))
		}
		var meta []byte
		if len(p.Metadata) > 0 {
			m, aerr := normalizeMetadata(p.Metadata)
			if aerr != nil {
				return aerr
			}
			meta = m
		}
		exp, aerr := expiry(p.ExpirationTTL, p.Expiration, jsonNum(p.ExpirationTTL), jsonNum(p.Expiration), now)
		if aerr != nil {
			return aerr
		}
		muts = append(muts, mutation{kind: recPut, key: *p.Key, value: value, meta: meta, exp: exp})
		return nil
	})
	if aerr != nil {
		return nil, aerr
	}
	return muts, nil
}

// refDecodeBulkDelete is the old handleBulkDelete up to applyBulk.
func refDecodeBulkDelete(body io.Reader, limit int64) ([]mutation, *apiError) {
	var muts []mutation
	aerr := refDecodeArray(body, limit, "bulk delete", func(i int, dec *json.Decoder) *apiError {
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

// The pair- and key-level decoders below skip validation, so that the
// decoded fields of items the handlers would reject are compared too.

func refDecodeItems(body []byte) ([]bulkItem, *apiError) {
	var items []bulkItem
	aerr := refDecodeArray(bytes.NewReader(body), MaxBulkRequestBytes, "bulk write", func(i int, dec *json.Decoder) *apiError {
		var p bulkPair
		if err := dec.Decode(&p); err != nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d: %v", i, err))
		}
		it := bulkItem{meta: p.Metadata, base64: p.Base64}
		if p.Key != nil {
			it.key, it.hasKey = *p.Key, true
		}
		if p.Value != nil {
			it.value, it.hasValue = []byte(*p.Value), true
		}
		if p.Expiration != nil {
			it.exp, it.hasExp = *p.Expiration, true
		}
		if p.ExpirationTTL != nil {
			it.ttl, it.hasTTL = *p.ExpirationTTL, true
		}
		items = append(items, it)
		return nil
	})
	return items, aerr
}

func fastDecodeItems(body []byte) ([]bulkItem, *apiError) {
	var items []bulkItem
	aerr := decodeBulkArray(body, "bulk write", func(i int, p *bulkParser) *apiError {
		var it bulkItem
		if err := p.pair(&it); err != nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d: %v", i, err))
		}
		items = append(items, it)
		return nil
	})
	return items, aerr
}

func refDecodeKeys(body []byte) ([]string, *apiError) {
	var keys []string
	aerr := refDecodeArray(bytes.NewReader(body), MaxBulkRequestBytes, "bulk delete", func(i int, dec *json.Decoder) *apiError {
		var k *string
		if err := dec.Decode(&k); err != nil || k == nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d is not a key name string", i))
		}
		keys = append(keys, *k)
		return nil
	})
	return keys, aerr
}

func fastDecodeKeys(body []byte) ([]string, *apiError) {
	var keys []string
	aerr := decodeBulkArray(body, "bulk delete", func(i int, p *bulkParser) *apiError {
		k, err := p.key()
		if err != nil {
			return badRequest(10029, fmt.Sprintf("invalid request: item %d is not a key name string", i))
		}
		keys = append(keys, k)
		return nil
	})
	return keys, aerr
}

// diffAPIError describes how two verdicts differ, or returns "".
func diffAPIError(got, want *apiError) string {
	switch {
	case got == nil && want == nil:
		return ""
	case got == nil || want == nil:
		return fmt.Sprintf("fast %v, reference %v", got, want)
	case got.status != want.status || got.code != want.code || got.msg != want.msg:
		return fmt.Sprintf("fast %d %d %q, reference %d %d %q", got.status, got.code, got.msg, want.status, want.code, want.msg)
	}
	return ""
}

func diffItems(got, want []bulkItem) string {
	if len(got) != len(want) {
		return fmt.Sprintf("fast decoded %d items, reference %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		switch {
		case g.hasKey != w.hasKey || g.key != w.key:
			return fmt.Sprintf("item %d: key fast %v %q, reference %v %q", i, g.hasKey, g.key, w.hasKey, w.key)
		case g.hasValue != w.hasValue || !bytes.Equal(g.value, w.value):
			return fmt.Sprintf("item %d: value fast %v %q, reference %v %q", i, g.hasValue, g.value, w.hasValue, w.value)
		case (g.meta == nil) != (w.meta == nil) || !bytes.Equal(g.meta, w.meta):
			return fmt.Sprintf("item %d: metadata fast %q, reference %q", i, g.meta, w.meta)
		case g.hasExp != w.hasExp || math.Float64bits(g.exp) != math.Float64bits(w.exp):
			return fmt.Sprintf("item %d: expiration fast %v %v, reference %v %v", i, g.hasExp, g.exp, w.hasExp, w.exp)
		case g.hasTTL != w.hasTTL || math.Float64bits(g.ttl) != math.Float64bits(w.ttl):
			return fmt.Sprintf("item %d: expiration_ttl fast %v %v, reference %v %v", i, g.hasTTL, g.ttl, w.hasTTL, w.ttl)
		case g.base64 != w.base64:
			return fmt.Sprintf("item %d: base64 fast %v, reference %v", i, g.base64, w.base64)
		}
	}
	return ""
}

func diffMutations(got, want []mutation) string {
	if len(got) != len(want) {
		return fmt.Sprintf("fast produced %d mutations, reference %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.kind != w.kind || g.key != w.key || !bytes.Equal(g.value, w.value) ||
			(g.meta == nil) != (w.meta == nil) || !bytes.Equal(g.meta, w.meta) || g.exp != w.exp {
			return fmt.Sprintf("mutation %d: fast %+v, reference %+v", i, g, w)
		}
	}
	return ""
}

// diffBulkDecode runs body through both decoders at every level and
// describes the first disagreement, or returns "".
func diffBulkDecode(body []byte, now time.Time) string {
	gotItems, gotErr := fastDecodeItems(body)
	wantItems, wantErr := refDecodeItems(body)
	if d := diffAPIError(gotErr, wantErr); d != "" {
		return "pairs: " + d
	}
	if d := diffItems(gotItems, wantItems); d != "" {
		return "pairs: " + d
	}
	gotMuts, gotErr := decodeBulkPut(body, now)
	wantMuts, wantErr := refDecodeBulkPut(bytes.NewReader(body), MaxBulkRequestBytes, now)
	if d := diffAPIError(gotErr, wantErr); d != "" {
		return "bulk write: " + d
	}
	if d := diffMutations(gotMuts, wantMuts); d != "" {
		return "bulk write: " + d
	}
	gotKeys, gotErr := fastDecodeKeys(body)
	wantKeys, wantErr := refDecodeKeys(body)
	if d := diffAPIError(gotErr, wantErr); d != "" {
		return "keys: " + d
	}
	if fmt.Sprintf("%q", gotKeys) != fmt.Sprintf("%q", wantKeys) {
		return fmt.Sprintf("keys: fast %q, reference %q", gotKeys, wantKeys)
	}
	gotMuts, gotErr = decodeBulkDelete(body)
	wantMuts, wantErr = refDecodeBulkDelete(bytes.NewReader(body), MaxBulkRequestBytes)
	if d := diffAPIError(gotErr, wantErr); d != "" {
		return "bulk delete: " + d
	}
	if d := diffMutations(gotMuts, wantMuts); d != "" {
		return "bulk delete: " + d
	}
	return ""
}
