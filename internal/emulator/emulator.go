// Package emulator is a local, in-process emulation of the Cloudflare Workers
// KV REST API (the v4 client API under /client/v4). It serves every operation
// of api/openapi/workers-kv.openapi.json with Cloudflare's envelopes, limits
// and error codes, optionally persists its data, and injects the faults a real
// deployment meets: the global request budget (429, code 971), per-key write
// limits, 5xx answers, dropped connections and latency.
//
// By design it shares no code with the client in kvapi: the two are
// independent readings of the same API, each checked against the OpenAPI
// schema, so a misreading in one shows up as a failure in the other's tests.
//
// The API is served under PathPrefix, so a client's base URL is
// "http://127.0.0.1:8787/client/v4", exactly like "https://api.cloudflare.com/client/v4".
//
// Choices where Cloudflare's behaviour is undocumented (each is a guess that a
// test pins down):
//   - Any account id and namespace id of at most 32 characters is accepted; a
//     namespace springs into existence on its first write. Reads of a never
//     written namespace behave as an empty namespace. Namespace operations
//     (GET/PUT/DELETE .../namespaces/{id}) on an id never seen, and every
//     operation on a deleted namespace, answer 404 code 10013.
//   - A longer account id answers 400 code 7003 ("Could not route to ...");
//     a longer namespace id answers 400 code 10011 ("malformed namespace ID").
//   - A key longer than 512 bytes answers 400 code 10030 (also for path keys,
//     where 414 would be an equally good guess). An empty key, "." or "..",
//     or one that is not valid UTF-8 (a path key can spell any bytes, but a
//     list result could not name it) answers 400 code 10042 (illegal key name).
//   - Key names are taken from the escaped path and percent-decoded exactly
//     once; an unescaped "/" in the path is part of the key name.
//   - GET .../metadata/{key} of a key without metadata answers 200 with
//     result null. (The schema types that result as a non-nullable object;
//     kvapi.KV.GetMetadata documents "JSON null when it has none".)
//   - DELETE of a missing key succeeds, as on the Workers binding.
//   - Credentials are checked before anything else: a request without valid
//     ones gets its 400 or 403 at once, is never charged to Faults.Budget
//     and meets no injected fault (the budget is the account's, which such
//     a request never reaches). Only HealthPath needs no credentials.
//   - Missing credentials answer 400 code 9106 "Missing X-Auth-Key,
//     X-Auth-Email or Authorization headers" (observed, cloudflare-python#2678);
//     a malformed Authorization or half of the email/key pair answers 400 code
//     6003 with an error_chain (6111, 6102, 6103); wrong credentials 403 code 10000.
//   - A raw PUT body with any Content-Type other than multipart/form-data is
//     the value itself.
//   - Metadata is kept as the writer sent it, less the whitespace between
//     JSON tokens: a listing and GET .../metadata return those bytes, with
//     no re-escaping, key reordering or number reformatting. Cloudflare does
//     not document whether it re-serializes metadata, so a client should
//     compare metadata as JSON values, not as bytes. Metadata that is not
//     a JSON object is listed too, though the schema types list metadata as
//     an object.
//   - A listing ends with result_info.cursor "" (never absent or null). A
//     page covers the next limit stored keys, and expired keys still
//     stored (until a data directory's compaction drops them) take their
//     place without being listed, as tombstones do on the Workers binding:
//     so a page may hold fewer keys than the limit, or none, and still
//     carry a cursor. Without expired keys, N keys take exactly
//     ceil(N/limit) pages (at least one). Listings lag nothing unless a
//     test freezes them (FreezeListings).
//   - With Faults.PerKeyWriteLimit, a second write (PUT or DELETE) to one key
//     within a second answers 429 code 10022 ("too many requests", wrangler's
//     limit-error group) with Retry-After: 1; in a bulk request such keys are
//     skipped and reported in unsuccessful_keys.
package emulator

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/httpserve"
)

// PathPrefix is where the API is mounted; a client's base URL is the
// emulator's address followed by PathPrefix.
const PathPrefix = "/client/v4"

// Operation names used as CountKey.Op. The KV operations use the same names
// as kvapi's Op constants, so counts and client metrics line up.
const (
	OpPut                  = "put"
	OpBulkPut              = "bulk_put"
	OpDelete               = "delete"
	OpBulkDelete           = "bulk_delete"
	OpBulkDeleteDeprecated = "bulk_delete_deprecated"
	OpList                 = "list"
	OpGet                  = "get"
	OpGetMetadata          = "get_metadata"
	OpNamespaces           = "namespaces"
	OpNamespaceCreate      = "namespace_create"
	OpNamespaceGet         = "namespace_get"
	OpNamespaceRename      = "namespace_rename"
	OpNamespaceDelete      = "namespace_delete"
	OpTokenVerify          = "token_verify"
	// OpUnknown counts requests that matched no route or no method.
	OpUnknown = "unknown"
)

// StatusDropped is the status counted for a connection the emulator dropped
// without answering (Faults.DropRate).
const StatusDropped = -1

// Limits enforced by the emulator, from Cloudflare's documentation
// (developers.cloudflare.com/kv/platform/limits) where the schema is silent.
const (
	MaxKeyBytes         = 512
	MaxValueBytes       = 25 << 20
	MaxMetadataBytes    = 1024
	MinTTLSeconds       = 60
	MaxBulkPairs        = 10000
	MaxBulkRequestBytes = 100_000_000
	MaxIDLength         = 32
	MinListLimit        = 10
	MaxListLimit        = 1000
)

// Options configure an Emulator.
type Options struct {
	// DataDir persists the data when set; "" keeps it in memory only.
	// Writes are appended to a checksummed log and fsynced before the
	// request is answered, so they survive kill -9.
	DataDir string
	// Token is the required credential. "" accepts any Bearer token or any
	// X-Auth-Email + X-Auth-Key pair (one of them must be present); otherwise
	// Bearer must equal Token, or X-Auth-Key must equal Token.
	Token string
	// Now is the clock for expirations and rate limits; default time.Now.
	Now func() time.Time
	// Logger receives request and persistence logs; nil discards them.
	Logger *slog.Logger
	// Faults are the injected failures; see SetFaults.
	Faults Faults
}

// Faults are failures the emulator injects. The zero value injects none.
// Stale listings are not a setting here but a state of one namespace:
// see FreezeListings.
type Faults struct {
	// Budget is the number of requests allowed per BudgetWindow; 0 is
	// unlimited. Cloudflare allows 1,200 per 5 minutes and, once exceeded,
	// blocks every call for BlockFor with 429, code 971, and Retry-After.
	// The budget is global to the emulator, not per token.
	Budget int
	// BudgetWindow is the budget's sliding window; default 5 minutes.
	BudgetWindow time.Duration
	// BlockFor is how long an over-budget client stays blocked; default BudgetWindow.
	BlockFor time.Duration
	// PerKeyWriteLimit enforces one write per second per key (429, code 10022).
	PerKeyWriteLimit bool
	// ServerErrorRate is the fraction of requests answered 500, 502 or 503
	// (code 10001) before they take effect.
	ServerErrorRate float64
	// DropRate is the fraction of requests whose connection is closed
	// without a reply: half of them before the request is read, half after
	// it took effect (the client cannot tell whether its write happened).
	DropRate float64
	// Latency is added to every request, plus a uniform [0, LatencyJitter).
	Latency       time.Duration
	LatencyJitter time.Duration
	// Seed makes the random fault decisions reproducible.
	Seed int64
}

// Entry is one stored key.
type Entry struct {
	Value []byte
	// Metadata is the JSON metadata as written, less the whitespace between
	// tokens; nil if none.
	Metadata json.RawMessage
	// Expiration is seconds since the epoch, 0 if the key never expires.
	Expiration int64
}

// CountKey identifies a request counter: the operation and the HTTP status
// answered (StatusDropped for dropped connections).
type CountKey struct {
	Op     string
	Status int
}

// Emulator is the KV API handler. It is safe for concurrent use.
type Emulator struct {
	token string
	// tokenSum is the SHA-256 of token, what credentials are compared with.
	tokenSum [sha256.Size]byte
	now      func() time.Time
	logger   *slog.Logger
	store    *store
	faults   *faultGate

	countMu sync.Mutex
	counts  map[CountKey]int
	// keyCounts counts, per write operation, the keys that requests
	// actually wrote or deleted: a bulk request is one request but many
	// keys, and Cloudflare bills each key.
	keyCounts map[string]int

	// maxBulkBytes is MaxBulkRequestBytes; tests lower it to exercise the
	// limit without 100 MB bodies.
	maxBulkBytes int64
	// bodies bounds the write bodies buffered at once.
	bodies *bodyGate
}

// New builds an emulator. With Options.DataDir it replays the data found
// there; an unreadable tail is logged, set aside and dropped, never fatal.
func New(opts Options) (*Emulator, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	st, err := openStore(opts.DataDir, now, logger)
	if err != nil {
		return nil, err
	}
	return &Emulator{
		token:    opts.Token,
		tokenSum: sha256.Sum256([]byte(opts.Token)),
		now:      now,
		logger:   logger,
		store:    st,
		faults:   newFaultGate(opts.Faults, now),
		counts:   make(map[CountKey]int),

		keyCounts: make(map[string]int),

		maxBulkBytes: MaxBulkRequestBytes,
		bodies:       newBodyGate(MaxBufferedBodyBytes, BodyQueueTimeout),
	}, nil
}

// SetFaults replaces the injected faults. The budget history is kept when
// the budget settings are unchanged; the random source is reseeded.
func (e *Emulator) SetFaults(f Faults) { e.faults.set(f) }

// Counts returns a copy of the request counters.
func (e *Emulator) Counts() map[CountKey]int {
	e.countMu.Lock()
	defer e.countMu.Unlock()
	return maps.Clone(e.counts)
}

// Count returns how many requests of op were answered with status; status 0
// sums every status, including dropped connections.
func (e *Emulator) Count(op string, status int) int {
	e.countMu.Lock()
	defer e.countMu.Unlock()
	if status != 0 {
		return e.counts[CountKey{op, status}]
	}
	n := 0
	for k, v := range e.counts {
		if k.Op == op {
			n += v
		}
	}
	return n
}

// KeyCount returns how many keys requests of op wrote (put, bulk_put) or
// deleted (delete, bulk_delete, bulk_delete_deprecated): a bulk request
// counts each key it applied, not the keys it reported in
// unsuccessful_keys. A delete of a key that did not exist counts too: the
// request named it and succeeded. So does a request whose connection was
// dropped after it took effect (Faults.DropRate): the keys changed. Other
// ops count 0.
func (e *Emulator) KeyCount(op string) int {
	e.countMu.Lock()
	defer e.countMu.Unlock()
	return e.keyCounts[op]
}

// ResetCounts zeroes every counter, KeyCount's too.
func (e *Emulator) ResetCounts() {
	e.countMu.Lock()
	defer e.countMu.Unlock()
	clear(e.counts)
	clear(e.keyCounts)
}

func (e *Emulator) countKeys(op string, n int) {
	e.countMu.Lock()
	e.keyCounts[op] += n
	e.countMu.Unlock()
}

func (e *Emulator) count(op string, status int) {
	e.countMu.Lock()
	e.counts[CountKey{op, status}]++
	e.countMu.Unlock()
}

// FreezeListings makes the namespace's listings stale, as a deterministic
// model of Workers KV's listing lag (a listing may trail writes by up to
// about 60 seconds). It snapshots the namespace's live keys, with their
// metadata and expiration, and from then on every list request for the
// namespace is answered from that snapshot, while reads, writes and deletes
// act on the live data: a key written after the freeze is not listed, a key
// deleted after it still is, and a listed key's metadata and expiration are
// those it had at the freeze. The snapshot is the namespace as it was at
// the freeze, so a key that expires later stays listed. Calling it again
// takes a new snapshot; ThawListings ends it. Deleting the namespace takes
// effect on listings at once (404), since the lag concerns keys. Nothing of
// this is persisted, and it is neither counted nor charged to the budget.
//
// A lag modelled as "the listing as of now minus d" (a Faults.ListLag) was
// left out on purpose: the store keeps only each key's current state, so it
// would need a history of every write, and a test built on it would hinge on
// the clock; a freeze says exactly which writes a listing misses.
func (e *Emulator) FreezeListings(account, namespace string) {
	e.store.freezeListing(nsRef{account, namespace})
}

// ThawListings ends FreezeListings: list requests see the live keys again.
// Thawing a namespace that is not frozen does nothing.
func (e *Emulator) ThawListings(account, namespace string) {
	e.store.thawListing(nsRef{account, namespace})
}

// Snapshot returns the live (unexpired) keys of a namespace.
func (e *Emulator) Snapshot(account, namespace string) map[string]Entry {
	return e.store.snapshot(nsRef{account, namespace})
}

// Seed stores a key directly, bypassing HTTP, faults and counters, so tests
// can plant keys kvsync did not write. The key must be a legal key name and
// the metadata, if any, valid JSON; the expiration is not checked.
func (e *Emulator) Seed(account, namespace, key string, ent Entry) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("emulator: seed %q: %s", key, err.msg)
	}
	var meta []byte
	if ent.Metadata != nil {
		m, aerr := normalizeMetadata(ent.Metadata)
		if aerr != nil {
			return fmt.Errorf("emulator: seed %q: %s", key, aerr.msg)
		}
		meta = m
	}
	ref := nsRef{account, namespace}
	err := e.store.apply(ref, []mutation{{kind: recPut, key: key, value: ent.Value, meta: meta, exp: ent.Expiration}})
	if errors.Is(err, errNamespaceDeleted) {
		return fmt.Errorf("emulator: seed %q: namespace %s/%s was deleted", key, account, namespace)
	}
	return err
}

// Close flushes and closes the persistent log. The emulator must not be used
// afterwards.
func (e *Emulator) Close() error { return e.store.close() }

// statusRecorder counts the request under the status its handler answers,
// at the moment that status is sent: before any byte of the answer leaves,
// so a client that has its answer always finds the request in the counters
// (StatsPath), even one whose body it could read to the end before the
// handler returned (a value sent with its Content-Length).
type statusRecorder struct {
	http.ResponseWriter
	status int
	count  func(status int)
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
		s.count(code)
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// discardWriter swallows a response the client will never see (a connection
// dropped after the request took effect).
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// ServeHTTP serves the API under PathPrefix, StatsPath and HealthPath.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == HealthPath {
		serveHealth(w, r)
		return
	}
	// Credentials are checked before anything else, so that a request
	// without them reaches no data, no counters (StatsPath) and no fault:
	// above all it is never charged to the budget, which would let anyone
	// who can reach the port get the real client answered 429.
	if r.URL.Path == StatsPath {
		if aerr := e.authenticate(r); aerr != nil {
			writeError(w, aerr)
			return
		}
		// The emulator's own observation endpoint (see StatsPath); it is
		// no Cloudflare route, so it bypasses counters, budget and faults.
		e.serveStats(w, r)
		return
	}
	rt, rerr := parseRoute(r)
	op := rt.op
	if op == "" {
		op = OpUnknown
	}
	start := e.now()
	if aerr := e.authenticate(r); aerr != nil {
		// Counted, so that scripts see refused calls, but nothing else;
		// before the answer, like every count (statusRecorder).
		e.count(op, aerr.status)
		writeError(w, aerr)
		return
	}

	if err := e.faults.delay(r.Context()); err != nil {
		// The client went away during the injected latency.
		e.count(op, StatusDropped)
		return
	}
	// The request's deadlines start after the injected latency, so no
	// --latency can eat into the time a large body needs.
	httpserve.ExtendDeadline(w, RequestTimeout)
	switch e.faults.dropDecision() {
	case dropBefore:
		e.count(op, StatusDropped)
		e.logger.Debug("emulator: dropping connection before reading", "op", op, "path", r.URL.Path)
		dropConnection(w)
		return
	case dropAfter:
		e.count(op, StatusDropped)
		e.logger.Debug("emulator: dropping connection after handling", "op", op, "path", r.URL.Path)
		e.handle(&discardWriter{h: http.Header{}}, r, rt, rerr)
		dropConnection(w)
		return
	}

	rec := &statusRecorder{ResponseWriter: w, count: func(status int) { e.count(op, status) }}
	e.handle(rec, r, rt, rerr)
	if rec.status == 0 {
		rec.WriteHeader(http.StatusOK)
	}
	e.logger.Debug("emulator: request", "op", op, "method", r.Method, "path", r.URL.EscapedPath(),
		"status", rec.status, "elapsed", e.now().Sub(start))
}

// handle runs the gates (budget, injected 5xx) and then the operation; the
// caller has authenticated the request.
func (e *Emulator) handle(w http.ResponseWriter, r *http.Request, rt route, rerr *apiError) {
	e.faults.rateHeaders(w.Header())
	if retry, blocked := e.faults.admit(); blocked {
		w.Header().Set("Retry-After", retry)
		writeError(w, &apiError{status: http.StatusTooManyRequests, code: 971,
			msg: "Please wait and consider throttling your request speed"})
		return
	}
	if status, fail := e.faults.serverError(); fail {
		writeError(w, &apiError{status: status, code: 10001, msg: "service temporarily unavailable"})
		return
	}
	if rerr != nil {
		writeError(w, rerr)
		return
	}
	rt.handler(e, w, r, rt)
}

// dropConnection closes the client's connection without a reply.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	// Not hijackable (HTTP/2, recorders): the server aborts the stream.
	panic(http.ErrAbortHandler)
}
