package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxMetadataRead bounds how much of a metadata part is read; anything past
// MaxMetadataBytes is rejected anyway, but whitespace may be compacted away.
const maxMetadataRead = 64 << 10

// maxPutBuffered is the most a single write holds in memory: the value and
// the metadata part, each read one byte past its limit.
const maxPutBuffered = MaxValueBytes + maxMetadataRead + 2

func notFoundKey() *apiError {
	return &apiError{status: http.StatusNotFound, code: 10009, msg: "get: 'key not found'"}
}

func namespaceNotFound() *apiError {
	return &apiError{status: http.StatusNotFound, code: 10013, msg: "namespace not found"}
}

func tooLarge(msg string) *apiError {
	return &apiError{status: http.StatusRequestEntityTooLarge, code: 10024, msg: msg}
}

// storeError maps a store failure to the envelope.
func (e *Emulator) writeStoreError(w http.ResponseWriter, err error) {
	if errors.Is(err, errNamespaceDeleted) {
		writeError(w, namespaceNotFound())
		return
	}
	writeError(w, &apiError{status: http.StatusInternalServerError, code: 10001, msg: "service temporarily unavailable: " + err.Error()})
}

// parseWhole parses an integral number (JSON numbers like 120 or 120.0).
func parseWhole(s string) (int64, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<62 {
		return 0, false
	}
	return int64(f), true
}

// expiry resolves expiration / expiration_ttl into an absolute time; TTL
// wins when both are present, and both must land at least 60 s ahead.
func expiry(ttl, exp *float64, ttlRaw, expRaw string, now time.Time) (int64, *apiError) {
	if ttl != nil {
		if *ttl != math.Trunc(*ttl) || *ttl < MinTTLSeconds || *ttl > 1<<40 {
			return 0, badRequest(10034, fmt.Sprintf("Invalid expiration_ttl of %s. Expiration TTL must be at least %d.", ttlRaw, MinTTLSeconds))
		}
		return now.Unix() + int64(*ttl), nil
	}
	if exp != nil {
		if *exp != math.Trunc(*exp) || *exp < float64(now.Unix()+MinTTLSeconds) || *exp > 1<<50 {
			return 0, badRequest(10033, fmt.Sprintf("Invalid expiration of %s. Expiration times must be at least %d seconds in the future.", expRaw, MinTTLSeconds))
		}
		return int64(*exp), nil
	}
	return 0, nil
}

// queryExpiry reads expiration parameters from the query string.
func queryExpiry(r *http.Request, now time.Time) (int64, *apiError) {
	q := r.URL.Query()
	var ttl, exp *float64
	if q.Has("expiration_ttl") {
		raw := q.Get("expiration_ttl")
		v, ok := parseWhole(raw)
		if !ok {
			return 0, badRequest(10034, fmt.Sprintf("Invalid expiration_ttl of %q. Please specify an integer number of seconds.", raw))
		}
		f := float64(v)
		ttl = &f
	}
	if q.Has("expiration") && ttl == nil {
		raw := q.Get("expiration")
		v, ok := parseWhole(raw)
		if !ok {
			return 0, badRequest(10033, fmt.Sprintf("Invalid expiration of %q. Please specify an integer number of seconds since the UNIX epoch.", raw))
		}
		f := float64(v)
		exp = &f
	}
	return expiry(ttl, exp, q.Get("expiration_ttl"), q.Get("expiration"), now)
}

// normalizeMetadata validates metadata JSON and returns it compacted (nil
// for JSON null). The 1024-byte limit applies to the serialized form.
func normalizeMetadata(raw []byte) ([]byte, *apiError) {
	var buf bytes.Buffer
	// Compact drops the whitespace around the value itself; trimming
	// beforehand would also pass what JSON does not count as whitespace
	// (a form feed, an NBSP), and such metadata is not JSON.
	if err := json.Compact(&buf, raw); err != nil || buf.Len() == 0 {
		return nil, badRequest(10047, "invalid metadata: not valid JSON")
	}
	if buf.String() == "null" {
		return nil, nil
	}
	if buf.Len() > MaxMetadataBytes {
		return nil, badRequest(10047, fmt.Sprintf("metadata too large: %d bytes serialized, the limit is %d", buf.Len(), MaxMetadataBytes))
	}
	return buf.Bytes(), nil
}

// readLimited reads at most limit bytes; over reports whether more followed.
func readLimited(r io.Reader, limit int64) (b []byte, over bool, err error) {
	b, err = io.ReadAll(io.LimitReader(r, limit+1))
	if int64(len(b)) > limit {
		return nil, true, err
	}
	return b, false, err
}

// readPutBody returns the value and metadata of a single write: a
// multipart form with a "value" part and an optional "metadata" part, or
// any other body taken whole as the value.
func readPutBody(r *http.Request) ([]byte, []byte, *apiError) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		v, over, err := readLimited(r.Body, MaxValueBytes)
		if over {
			return nil, nil, tooLarge(fmt.Sprintf("value too large: the limit is %d bytes", MaxValueBytes))
		}
		if err != nil {
			return nil, nil, badRequest(10029, "invalid request: reading the body: "+err.Error())
		}
		return v, nil, nil
	}
	boundary := params["boundary"]
	if boundary == "" {
		return nil, nil, badRequest(10029, "invalid request: multipart body without a boundary")
	}
	mr := multipart.NewReader(r.Body, boundary)
	var value, meta []byte
	seenValue := false
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, badRequest(10029, "invalid request: malformed multipart body: "+err.Error())
		}
		switch part.FormName() {
		case "value":
			v, over, err := readLimited(part, MaxValueBytes)
			if over {
				return nil, nil, tooLarge(fmt.Sprintf("value too large: the limit is %d bytes", MaxValueBytes))
			}
			if err != nil {
				return nil, nil, badRequest(10029, "invalid request: malformed multipart body: "+err.Error())
			}
			value, seenValue = v, true
		case "metadata":
			m, over, err := readLimited(part, maxMetadataRead)
			if over {
				return nil, nil, badRequest(10047, fmt.Sprintf("metadata too large: the limit is %d bytes", MaxMetadataBytes))
			}
			if err != nil {
				return nil, nil, badRequest(10029, "invalid request: malformed multipart body: "+err.Error())
			}
			nm, aerr := normalizeMetadata(m)
			if aerr != nil {
				return nil, nil, aerr
			}
			meta = nm
		default:
			if _, err := io.Copy(io.Discard, part); err != nil {
				return nil, nil, badRequest(10029, "invalid request: malformed multipart body: "+err.Error())
			}
		}
	}
	if !seenValue {
		return nil, nil, badRequest(10012, "malformed value: the multipart body has no \"value\" part")
	}
	if value == nil {
		value = []byte{}
	}
	return value, meta, nil
}

func handlePut(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	exp, aerr := queryExpiry(r, e.now())
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	release, aerr := e.bodies.acquire(r, reserve(r, maxPutBuffered))
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	defer release()
	value, meta, aerr := readPutBody(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if !e.faults.keyWritesAllowed(rt.ref(), []string{rt.key})[0] {
		w.Header().Set("Retry-After", "1")
		writeError(w, &apiError{status: http.StatusTooManyRequests, code: 10022, msg: "too many requests: at most one write per second to the same key"})
		return
	}
	if err := e.store.apply(rt.ref(), []mutation{{kind: recPut, key: rt.key, value: value, meta: meta, exp: exp}}); err != nil {
		e.writeStoreError(w, err)
		return
	}
	e.countKeys(rt.op, 1)
	writeOK(w, nil)
}

func handleDelete(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	if !e.faults.keyWritesAllowed(rt.ref(), []string{rt.key})[0] {
		w.Header().Set("Retry-After", "1")
		writeError(w, &apiError{status: http.StatusTooManyRequests, code: 10022, msg: "too many requests: at most one write per second to the same key"})
		return
	}
	if err := e.store.apply(rt.ref(), []mutation{{kind: recDelete, key: rt.key}}); err != nil {
		e.writeStoreError(w, err)
		return
	}
	e.countKeys(rt.op, 1)
	writeOK(w, nil)
}

// lookup reads rt's key (its value too when withValue), answering the
// request itself when it cannot: a store error, or no such live key.
func (e *Emulator) lookup(w http.ResponseWriter, rt route, withValue bool) (*Entry, bool) {
	ent, err := e.store.get(rt.ref(), rt.key, withValue)
	if err != nil {
		e.writeStoreError(w, err)
		return nil, false
	}
	if ent == nil {
		writeError(w, notFoundKey())
		return nil, false
	}
	return ent, true
}

func handleGet(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	ent, ok := e.lookup(w, rt, true)
	if !ok {
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(len(ent.Value)))
	if ent.Expiration != 0 {
		h.Set("Expiration", strconv.FormatInt(ent.Expiration, 10))
	}
	w.WriteHeader(http.StatusOK)
	w.Write(ent.Value)
}

func handleGetMetadata(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	ent, ok := e.lookup(w, rt, false)
	if !ok {
		return
	}
	if ent.Metadata == nil {
		writeOK(w, nil)
		return
	}
	writeOK(w, json.RawMessage(ent.Metadata))
}

// bulkBody reads a bulk request's body once the body gate has room for it;
// release frees that room.
func (e *Emulator) bulkBody(r *http.Request, what string) (body []byte, release func(), aerr *apiError) {
	if r.ContentLength > e.maxBulkBytes {
		// Refused before queueing for, or reading, a body known to be too large.
		aerr := bulkTooLarge(what, e.maxBulkBytes)
		aerr.unreadBody = true
		return nil, nil, aerr
	}
	release, aerr = e.bodies.acquire(r, reserve(r, e.maxBulkBytes+1))
	if aerr != nil {
		return nil, nil, aerr
	}
	body, aerr = readBulkBody(r, e.maxBulkBytes, what)
	if aerr != nil {
		release()
		return nil, nil, aerr
	}
	return body, release, nil
}

// bulkResult is the result of bulk writes and deletes.
type bulkResult struct {
	SuccessfulKeyCount int      `json:"successful_key_count"`
	UnsuccessfulKeys   []string `json:"unsuccessful_keys"`
}

func handleBulkPut(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	now := e.now()
	body, release, aerr := e.bulkBody(r, "bulk write")
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	defer release()
	muts, aerr := decodeBulkPut(body, now)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	e.applyBulk(w, rt, muts)
}

func handleBulkDelete(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	body, release, aerr := e.bulkBody(r, "bulk delete")
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	defer release()
	muts, aerr := decodeBulkDelete(body)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	e.applyBulk(w, rt, muts)
}

// applyBulk applies a validated bulk request; keys refused by the per-key
// write limit are reported as unsuccessful, for the client to retry.
func (e *Emulator) applyBulk(w http.ResponseWriter, rt route, muts []mutation) {
	keys := make([]string, len(muts))
	for i, m := range muts {
		keys[i] = m.key
	}
	allowed := e.faults.keyWritesAllowed(rt.ref(), keys)
	res := bulkResult{UnsuccessfulKeys: []string{}}
	kept := muts[:0]
	for i, m := range muts {
		if allowed[i] {
			kept = append(kept, m)
		} else {
			res.UnsuccessfulKeys = append(res.UnsuccessfulKeys, m.key)
		}
	}
	if len(kept) > 0 {
		if err := e.store.apply(rt.ref(), kept); err != nil {
			e.writeStoreError(w, err)
			return
		}
	}
	res.SuccessfulKeyCount = len(kept)
	e.countKeys(rt.op, len(kept))
	writeOK(w, res)
}

func handleList(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	q := r.URL.Query()
	limit := MaxListLimit
	if q.Has("limit") {
		n, ok := parseWhole(q.Get("limit"))
		if !ok || n < MinListLimit || n > MaxListLimit {
			writeError(w, badRequest(10028, fmt.Sprintf("Invalid key_limit of %q. Please specify an integer between %d and %d.", q.Get("limit"), MinListLimit, MaxListLimit)))
			return
		}
		limit = int(n)
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		k, ok := decodeCursor(c)
		if !ok {
			writeError(w, badRequest(10041, "invalid \"list keys\" cursor"))
			return
		}
		after = k
	}
	keys, cursor, err := e.store.list(rt.ref(), q.Get("prefix"), after, limit)
	if err != nil {
		e.writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, envelope{Success: true, Result: keys,
		ResultInfo: map[string]any{"count": len(keys), "cursor": cursor}})
}

func handleTokenVerify(e *Emulator, w http.ResponseWriter, r *http.Request, rt route) {
	writeOK(w, map[string]string{"id": "kvsync-emulator", "status": "active"})
}
