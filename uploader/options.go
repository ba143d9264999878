package uploader

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// DeletePolicy says what happens to a key whose file went away.
type DeletePolicy string

// The delete policies.
const (
	// DeleteRemove deletes the key.
	DeleteRemove DeletePolicy = "delete"
	// DeleteKeep leaves the key in KV and forgets it: kvsync stops managing it.
	DeleteKeep DeletePolicy = "keep"
	// DeleteExpire lets the key live on for DeleteTTL, so readers that still
	// reference it (an old deployment) keep working meanwhile. The content is
	// gone locally, so it costs two requests per key: a read of the current
	// value and a rewrite of it with expiration_ttl.
	DeleteExpire DeletePolicy = "expire"
)

// DeletePolicies lists every policy, for config to offer and check.
var DeletePolicies = []DeletePolicy{DeleteRemove, DeleteKeep, DeleteExpire}

// Defaults for the zero values of Options.
const (
	DefaultConcurrency = 4
	// DefaultQueueSize bounds the keys waiting for a write, like rclone's
	// --max-backlog 10000.
	DefaultQueueSize = 10000
	// DefaultBulkThreshold: files up to 1 MiB ride in bulk requests; larger
	// ones are streamed, so no large value is ever held in memory.
	DefaultBulkThreshold = 1 << 20
	// DefaultBulkMaxBytes keeps a bulk request well under
	// kvapi.MaxBulkRequestBytes even when every value is base64-encoded
	// (4/3), and bounds memory: the bulk writes in flight hold at most about
	// twice it, each batch whole until its reply. Small rather than large,
	// because a larger batch saves no measurable time (a tree of small files
	// still goes out in a few requests, and reading one batch overlaps
	// sending another) while the peak RSS of a sync grows with it. The
	// measurements that chose it: bench/README.md, "Earlier runs".
	DefaultBulkMaxBytes = 8 << 20
	// DefaultBulkMaxPairs is half of kvapi.MaxBulkPairs: a tree of small
	// files that would fill one request of the API's size goes out as two
	// of equal size, so reading one overlaps sending the other evenly, and
	// a batch of tiny files holds half the bookkeeping until its reply. A
	// large tree still takes few requests, far inside kvapi.AccountBudget.
	// The measurements: bench/README.md, "Earlier runs".
	DefaultBulkMaxPairs = 5000
	// DefaultBulkMinPending: below it, single changes go through a streamed
	// PUT each, which is as cheap and has less latency.
	DefaultBulkMinPending = 8
	// DefaultRetryBackoff is how long a key whose write failed with a
	// retryable error (after the client's own retries) waits before the
	// engine tries it again.
	DefaultRetryBackoff = 30 * time.Second
)

// maxAttempts is how often a key left unwritten by a bulk request (listed in
// unsuccessful_keys) or whose file changed while it was sent is tried again
// at once before it counts as failed and waits for RetryBackoff.
const maxAttempts = 3

// pairOverhead estimates the JSON around one bulk pair besides key, value and
// metadata: field names, quotes, expiration numbers, base64 flag, commas.
const pairOverhead = 128

// maxReportFailures caps Report.Failures; Report.Failed stays exact.
const maxReportFailures = 1000

// Store is the part of the state store the engine needs; *state.Store
// implements it.
type Store interface {
	Get(scope, key string) (state.Record, bool, error)
	PutBatch(scope string, recs map[string]state.Record) error
	DeleteBatch(scope string, keys []string) error
	ForEach(scope, prefix string, fn func(key string, r state.Record) error) error
	// ForEachFrom is ForEach from the first key at or after from.
	ForEachFrom(scope, prefix, from string, fn func(key string, r state.Record) error) error
}

var _ Store = (*state.Store)(nil)

// manyGetter is a Store that reads a batch's records at once; the engine
// uses it when the Store has it (*state.Store does: one transaction instead
// of one per key).
type manyGetter interface {
	GetMany(scope string, keys []string) (map[string]state.Record, error)
}

var _ manyGetter = (*state.Store)(nil)

// Options configure an Engine. KV, Store, Scope and Namespace are required;
// zero values of the others mean their defaults.
type Options struct {
	// KV is the API, already decorated with rate limiting and retries.
	KV kvapi.KV
	// Store records what was written; *state.Store implements it.
	Store Store
	// Scope is "<account>/<namespace>", the store's scope for this tree.
	Scope     string
	Namespace string
	// Prefix confines deletions: only keys under it are ever listed or deleted.
	Prefix string
	// Concurrency is the number of requests in flight; default 4.
	Concurrency int
	// QueueSize bounds the keys waiting; Changed and Snapshot block when it
	// is reached (backpressure). Default 10000.
	QueueSize int
	// Delete is the policy for keys whose file went away; default "delete".
	Delete DeletePolicy
	// DeleteTTL is the expiration_ttl of the "expire" policy; at least
	// kvapi.MinTTLSeconds.
	DeleteTTL time.Duration
	// MaxDeletes caps the deletions of one full sync; above it, nothing of
	// that pass is deleted. The deletions the watcher reports between two
	// full syncs count as one pass too: past the cap they are kept until
	// the next full sync. 0 allows none, -1 means unlimited. The "keep"
	// policy deletes nothing anyway.
	MaxDeletes int
	// BulkThreshold: files up to this size go through bulk writes when
	// batching applies; default 1 MiB; -1 streams every file alone.
	BulkThreshold int64
	// BulkMaxBytes bounds a bulk request's raw value bytes plus an overhead
	// estimate per pair; default 8 MiB. The bulk requests in flight together
	// hold at most about twice this, whatever Concurrency is. The encoded
	// body (escapes, base64) is kept within kvapi.MaxBulkRequestBytes
	// independently of it, by kvapi's own measure of what it sends.
	BulkMaxBytes int64
	// BulkMaxPairs bounds the pairs of a bulk request; default 5000, at
	// most kvapi.MaxBulkPairs.
	BulkMaxPairs int
	// BulkMinPending is how many bulk-eligible keys must be waiting before
	// writes outside a full sync are batched; default 8.
	BulkMinPending int
	// RetryBackoff is the wait before a key that failed with a retryable
	// error is tried again; default 30 s. A full Snapshot retries it sooner.
	RetryBackoff time.Duration
	// Recheck, when set, is told the key of a file that was not written
	// because it is not the file the scan saw (see desired.State.File):
	// the watcher's Recheck, which evaluates the path again, so the key's
	// current state arrives through Changed. Without it (a one-shot sync)
	// the key is only reported held back. It must not block.
	Recheck func(key string)

	// Owner, when set, is this sync's owner (kvrecord.OwnerOf the
	// namespace and prefix): every write carries the mark of package
	// kvrecord in its metadata, and a full sync that lists the namespace
	// compares the tree with the listing rather than with the store (see
	// remote.go). Empty turns records in metadata off: the store alone says
	// what was written.
	Owner kvrecord.Owner
	// ListInterval says which full syncs list the namespace (with Owner
	// set): 0 every one; a positive interval the first one that long after
	// the last listing; negative none, the store being trusted. Whatever
	// it is, while the store is fresh (Reconcile) the first full sync
	// lists.
	ListInterval time.Duration
	// Reconcile says the store is fresh (missing or corrupt). With Owner
	// set, the first full sync lists the namespace. Without it, that
	// listing only reports keys nothing can vouch for, and every key of
	// the tree is rewritten since nothing can be compared.
	Reconcile bool
	// DryRun plans only: no writes, no deletes, no store updates.
	DryRun bool
	// Logger receives the engine's log; nil discards.
	Logger *slog.Logger
	// Metrics receives this sync's series (metrics.Metrics.Sync); nil
	// counts nothing.
	Metrics *metrics.Sync
	// Now is the clock for expirations and record times; default time.Now.
	Now func() time.Time
}

// OptionsError is an invalid Options field.
type OptionsError struct {
	Field  string
	Reason string
}

func (e *OptionsError) Error() string {
	return fmt.Sprintf("uploader: Options.%s: %s", e.Field, e.Reason)
}

// withDefaults validates o and fills the defaults.
func (o Options) withDefaults() (Options, error) {
	bad := func(field, format string, args ...any) (Options, error) {
		return o, &OptionsError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case o.KV == nil:
		return bad("KV", "is required")
	case o.Store == nil:
		return bad("Store", "is required")
	case o.Scope == "":
		return bad("Scope", "is required")
	case o.Namespace == "":
		return bad("Namespace", "is required")
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Delete == "" {
		o.Delete = DeleteRemove
	}
	if o.BulkThreshold == 0 {
		o.BulkThreshold = DefaultBulkThreshold
	}
	if o.BulkMaxBytes == 0 {
		o.BulkMaxBytes = DefaultBulkMaxBytes
	}
	if o.BulkMaxPairs == 0 {
		o.BulkMaxPairs = DefaultBulkMaxPairs
	}
	if o.BulkMinPending == 0 {
		o.BulkMinPending = DefaultBulkMinPending
	}
	if o.RetryBackoff == 0 {
		o.RetryBackoff = DefaultRetryBackoff
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.Concurrency < 0:
		return bad("Concurrency", "is negative (%d)", o.Concurrency)
	case o.QueueSize < 0:
		return bad("QueueSize", "is negative (%d)", o.QueueSize)
	case !slices.Contains(DeletePolicies, o.Delete):
		return bad("Delete", "is %q; want delete, keep or expire", o.Delete)
	case o.Delete == DeleteExpire && o.DeleteTTL < kvapi.MinTTLSeconds*time.Second:
		return bad("DeleteTTL", "is %s; the expire policy needs at least 60s", o.DeleteTTL)
	case o.MaxDeletes < -1:
		return bad("MaxDeletes", "is %d; want -1 (unlimited) or more", o.MaxDeletes)
	case o.BulkThreshold < -1 || o.BulkThreshold > kvapi.MaxValueBytes:
		return bad("BulkThreshold", "is %d; want -1..%d", o.BulkThreshold, kvapi.MaxValueBytes)
	case o.BulkMaxBytes < 0 || o.BulkMaxBytes > kvapi.MaxBulkRequestBytes:
		// Values that encode longer (escapes, base64) split a batch
		// earlier: each batch is measured as encoded, see putBulk.
		return bad("BulkMaxBytes", "is %d; want at most %d", o.BulkMaxBytes, kvapi.MaxBulkRequestBytes)
	case o.BulkThreshold+pairOverhead+kvapi.MaxKeyBytes+kvapi.MaxMetadataBytes > o.BulkMaxBytes:
		return bad("BulkMaxBytes", "is %d, too small for one pair of BulkThreshold=%d bytes", o.BulkMaxBytes, o.BulkThreshold)
	case o.BulkMaxPairs < 0 || o.BulkMaxPairs > kvapi.MaxBulkPairs:
		return bad("BulkMaxPairs", "is %d; want 1..%d", o.BulkMaxPairs, kvapi.MaxBulkPairs)
	case o.BulkMinPending < 0:
		return bad("BulkMinPending", "is negative (%d)", o.BulkMinPending)
	case o.RetryBackoff < 0:
		return bad("RetryBackoff", "is negative (%s)", o.RetryBackoff)
	}
	return o, nil
}
