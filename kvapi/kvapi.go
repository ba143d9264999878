// Package kvapi is a client for the Cloudflare Workers KV REST API. It knows
// the API, not what the files mean: streamed multipart writes, bulk writes and
// deletes, key listing, reads, and typed errors. It neither retries nor rate
// limits; package ratelimit wraps it for that.
//
// A request goes through the files in this order:
//
//   - kvapi.go: the KV interface, its types and the API's limits.
//   - validate.go, errors.go: the local checks, and every error type.
//   - ops.go: the operations of Client, one method per endpoint.
//   - putbody.go, bulkbody.go: the streamed bodies of a single write
//     (multipart) and of a bulk write (a JSON array), and their lengths.
//   - request.go: URLs, headers and the round trip.
//   - reply.go: reading and classifying replies (envelope, errors, Retry-After).
//   - client.go: Options, New, authentication and the HTTP client.
//   - value.go: the Values a single write streams from.
package kvapi

import (
	"context"
	"encoding/json"
	"io"
	"time"
)

// Limits of the KV API, enforced locally before any request is sent.
const (
	MaxKeyBytes      = 512
	MaxValueBytes    = 25 << 20
	MaxMetadataBytes = 1024
	MinTTLSeconds    = 60
	// MinExpirationAheadSeconds is how far in the future an absolute expiration must be.
	MinExpirationAheadSeconds = 60
	MaxBulkPairs              = 10000
	// MaxBulkRequestBytes is the bulk body limit ("100 megabytes or less").
	MaxBulkRequestBytes = 100_000_000
	// MinListLimit and MaxListLimit bound ListOptions.Limit.
	MinListLimit = 10
	MaxListLimit = 1000
)

// Cloudflare's API budget: AccountBudget requests per BudgetWindow per token,
// counted across every user of the token (dashboard, other tools); going
// over blocks every call for a BudgetWindow. An account may have a raised
// budget (config's api.budget); this is the one every account starts with.
// The client does not enforce it; package ratelimit does.
const (
	AccountBudget = 1200
	BudgetWindow  = 5 * time.Minute
)

// Op names an API operation. The values are bounded metric labels.
type Op string

// The operations of the KV API that kvsync uses.
const (
	OpPut         Op = "put"
	OpBulkPut     Op = "bulk_put"
	OpDelete      Op = "delete"
	OpBulkDelete  Op = "bulk_delete"
	OpList        Op = "list"
	OpGet         Op = "get"
	OpGetMetadata Op = "get_metadata"
)

// Ops lists every Op, so metrics can initialise their label sets.
var Ops = []Op{OpPut, OpBulkPut, OpDelete, OpBulkDelete, OpList, OpGet, OpGetMetadata}

// KV is the API surface kvsync needs. Client implements it against HTTP;
// decorators (rate limiting, retries, instrumentation) implement it by
// wrapping another KV. ns is the namespace id; the account is the client's.
type KV interface {
	// PutValue writes one value, streamed, with optional metadata and expiration.
	PutValue(ctx context.Context, ns, key string, v Value, opts PutOptions) error
	// BulkPut writes up to MaxBulkPairs pairs in one request. Keys the API
	// could not write come back in BulkResult.Unsuccessful.
	BulkPut(ctx context.Context, ns string, pairs []BulkPair) (BulkResult, error)
	// DeleteValue deletes one key.
	DeleteValue(ctx context.Context, ns, key string) error
	// BulkDelete deletes up to MaxBulkPairs keys in one request.
	BulkDelete(ctx context.Context, ns string, keys []string) (BulkResult, error)
	// ListKeys returns one page of keys; follow KeyPage.Cursor until it is
	// empty (ListAll does). A page may be empty while more remain.
	ListKeys(ctx context.Context, ns string, opts ListOptions) (KeyPage, error)
	// GetValue reads a value and its expiration (0 when none).
	GetValue(ctx context.Context, ns, key string) (ValueInfo, error)
	// GetMetadata reads a key's metadata (JSON null when it has none).
	GetMetadata(ctx context.Context, ns, key string) (json.RawMessage, error)
}

// Value is a request body that can be produced again for every attempt, so a
// retry resends the whole payload.
type Value interface {
	// Size is the exact number of bytes Open yields.
	Size() int64
	// Open returns a fresh reader positioned at the start.
	Open() (io.ReadCloser, error)
}

// PutOptions are the optional parts of a single write.
type PutOptions struct {
	// Metadata is a JSON object of at most MaxMetadataBytes, or nil for none.
	Metadata json.RawMessage
	// Expiration is an absolute expiry in seconds since the epoch; 0 for none.
	Expiration int64
	// ExpirationTTL is seconds from the write; 0 for none. It wins over Expiration.
	ExpirationTTL int64
}

// BulkPair is one pair of a bulk write. The client sends Value as a JSON
// string when it is valid UTF-8 and as base64 (with base64:true) otherwise.
type BulkPair struct {
	Key           string
	Value         []byte
	Metadata      json.RawMessage
	Expiration    int64
	ExpirationTTL int64
}

// BulkResult is the outcome of a bulk write or delete that the API accepted.
type BulkResult struct {
	SuccessfulKeyCount int
	// Unsuccessful lists keys that were not written or deleted and should be retried.
	Unsuccessful []string
}

// ListOptions select a page of keys.
type ListOptions struct {
	Prefix string
	Cursor string
	// Limit is MinListLimit to MaxListLimit; 0 means the API default
	// (MaxListLimit).
	Limit int
}

// KeyInfo is one listed key.
type KeyInfo struct {
	Name       string          `json:"name"`
	Expiration int64           `json:"expiration,omitempty"`
	Metadata   json.RawMessage `json:"metadata,omitempty"`
}

// KeyPage is one page of a listing. Cursor is empty on the last page.
type KeyPage struct {
	Keys   []KeyInfo
	Cursor string
}

// ValueInfo is a value read back with its expiration.
type ValueInfo struct {
	Value      []byte
	Expiration int64
}

// ListAll calls fn for every key under prefix, following cursors until the
// API returns an empty one (not until a page is empty).
func ListAll(ctx context.Context, kv KV, ns, prefix string, fn func(KeyInfo) error) error {
	cursor := ""
	for {
		page, err := kv.ListKeys(ctx, ns, ListOptions{Prefix: prefix, Cursor: cursor})
		if err != nil {
			return err
		}
		for _, k := range page.Keys {
			if err := fn(k); err != nil {
				return err
			}
		}
		if page.Cursor == "" {
			return nil
		}
		cursor = page.Cursor
	}
}
