package uploader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/kvrecord"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// The namespace is the truth: a listing of the keys under the prefix
// returns each key's metadata and expiration, and so the record kvsync
// wrote into it (package kvrecord). A full sync that has a listing compares
// every file with it, not with the state store, so losing the store (a CI
// runner, a new pod) costs list requests and never a rewrite of an
// unchanged file or an orphaned key; and a key someone deleted or
// overwrote is found and written again (drift). The store stays a cache:
// what the listing vouches for is recorded in it, so the daemon compares
// changes between listings with it alone (Options.ListInterval).
//
// A listing can lag writes by up to about a minute. Nothing here trusts it
// beyond one pass, and every key carries its own record, so a lag delays a
// deletion or causes a redundant write until a later listing; it cannot
// lose a key: a key written but not listed yet has its store record (a
// deletion candidate) or, with no store, is listed by a later run.

// remoteKey is what a listing said of one key. It is kept small: a listing
// holds one per key under the prefix for the length of a pass.
type remoteKey struct {
	digest     kvrecord.Digest
	expiration int64
	// ours: the key carries this sync's mark; marked: any valid mark
	// (another sync's too); expiring: ours, kept only until it expires.
	ours, marked, expiring bool
}

// listing is one listing of the namespace under the prefix, in key order
// (the API's, and the store's): a slice searched by key, about 60 bytes a
// key, where a map would cost twice that for the length of a pass.
type listing struct {
	keys     []listedKey
	requests int
	owned    int
}

type listedKey struct {
	name string
	remoteKey
}

// get returns what the listing said of key.
func (l *listing) get(key string) (remoteKey, bool) {
	i, ok := slices.BinarySearchFunc(l.keys, key, func(k listedKey, key string) int { return strings.Compare(k.name, key) })
	if !ok {
		return remoteKey{}, false
	}
	return l.keys[i].remoteKey, true
}

// ErrUnreachable wraps a listing or probe that failed: the namespace could
// not be reached with these credentials.
var ErrUnreachable = errors.New("the namespace could not be listed")

// list lists the namespace under the prefix.
func (e *Engine) list(ctx context.Context) (*listing, error) {
	l := &listing{}
	err := e.listPages(ctx, kvapi.MaxListLimit, func(k kvapi.KeyInfo) {
		var rk remoteKey
		rk.expiration = k.Expiration
		if _, m, ok := kvrecord.Split(k.Metadata); ok {
			rk.marked = true
			if m.Owner == e.o.Owner {
				rk.ours, rk.expiring, rk.digest = true, m.Expiring, m.Digest
				l.owned++
			}
		}
		l.keys = append(l.keys, listedKey{k.Name, rk})
	}, &l.requests, false)
	if err != nil {
		return nil, err
	}
	// Cloudflare lists in key order; a listing that is not (a fake, a
	// proxy) is put in it, since lookups search it.
	if !slices.IsSortedFunc(l.keys, func(a, b listedKey) int { return strings.Compare(a.name, b.name) }) {
		slices.SortFunc(l.keys, func(a, b listedKey) int { return strings.Compare(a.name, b.name) })
	}
	return l, nil
}

// listPages follows a listing's cursors under the prefix; with one, it
// stops after the first page (a probe).
func (e *Engine) listPages(ctx context.Context, limit int, fn func(kvapi.KeyInfo), requests *int, one bool) error {
	cursor := ""
	for {
		page, err := e.o.KV.ListKeys(ctx, e.o.Namespace, kvapi.ListOptions{Prefix: e.o.Prefix, Cursor: cursor, Limit: limit})
		*requests++
		if err != nil {
			return fmt.Errorf("%w (namespace %s, prefix %q): %w", ErrUnreachable, e.o.Namespace, e.o.Prefix, err)
		}
		for _, k := range page.Keys {
			fn(k)
		}
		if one || page.Cursor == "" {
			return nil
		}
		cursor = page.Cursor
	}
}

// listDue reports whether the next full sync lists the namespace.
func (e *Engine) listDue(now time.Time) bool {
	switch {
	case e.o.Owner == "":
		return false // nothing in KV to compare with
	case !e.listedOnce && e.o.Reconcile:
		return true // a fresh store knows nothing
	case e.o.ListInterval < 0:
		return false
	}
	// lastList starts at New's time: a daemon with its store lists an
	// interval after it started.
	return now.Sub(e.lastList) >= e.o.ListInterval
}

// Prepare readies the next full sync before its tree is scanned: when
// that sync will list the namespace (see Options.ListInterval), it lists
// now, so Published knows which files are already in KV and the scan
// hashes them. When it will not, it returns ListInfo.Skipped and sends
// nothing. The error wraps ErrUnreachable.
func (e *Engine) Prepare(ctx context.Context) (ListInfo, error) {
	e.mu.Lock()
	due := e.listDue(e.o.Now())
	e.mu.Unlock()
	if !due {
		return ListInfo{Skipped: true}, nil
	}
	l, err := e.list(ctx)
	if err != nil {
		return ListInfo{}, err
	}
	e.mu.Lock()
	e.prepared = l
	e.listedOnce, e.lastList = true, e.o.Now()
	e.mu.Unlock()
	return ListInfo{Keys: len(l.keys), Owned: l.owned, Requests: l.requests}, nil
}

// Probe proves with one list request that the namespace can be reached
// with these credentials: a sync that has nothing to write, and does not
// list, must still fail on a bad token or a wrong URL. The error wraps
// ErrUnreachable.
func (e *Engine) Probe(ctx context.Context) error {
	n := 0
	return e.listPages(ctx, kvapi.MinListLimit, func(kvapi.KeyInfo) {}, &n, true)
}

// ListInfo says what a full sync's listing found.
type ListInfo struct {
	// Skipped: the sync trusted the state store and did not list (a
	// probe of one request proved the namespace reachable).
	Skipped bool
	// Keys under the prefix, Owned of them by this sync; Requests made.
	Keys, Owned, Requests int
	// Err is why a full sync's own listing failed; it then compared with
	// the store alone.
	Err error
}

// Published reports whether the listing Prepare made shows key as
// written by this sync: the next full sync compares the key's content
// with it, so the scan must hash the file (watcher.Options.NeedHash).
func (e *Engine) Published(key string) bool {
	e.mu.Lock()
	l := e.prepared
	if l == nil {
		// Taken by the full sync whose scan is asking (startPass, Plan).
		l = e.walking
	}
	e.mu.Unlock()
	if l == nil {
		return false
	}
	rk, ok := l.get(key)
	return ok && rk.ours && !rk.expiring
}

// takeListing returns the listing a full sync starting now compares
// with: the prepared one, or a new one when one is due.
func (e *Engine) takeListing(ctx context.Context) (*listing, ListInfo, error) {
	e.mu.Lock()
	l := e.prepared
	e.prepared = nil
	due := l == nil && e.listDue(e.o.Now())
	e.mu.Unlock()
	if l != nil {
		return l, ListInfo{Keys: len(l.keys), Owned: l.owned, Requests: l.requests}, nil
	}
	if !due {
		return nil, ListInfo{Skipped: true}, nil
	}
	l, err := e.list(ctx)
	if err != nil {
		return nil, ListInfo{}, err
	}
	e.mu.Lock()
	e.listedOnce, e.lastList = true, e.o.Now()
	e.mu.Unlock()
	return l, ListInfo{Keys: len(l.keys), Owned: l.owned, Requests: l.requests}, nil
}

// rule is st's expiration rule as written.
func rule(st desired.State) kvrecord.Rule {
	ttl, at := expirationFields(st.Expiration)
	return kvrecord.Rule{TTL: ttl, At: at}
}

// markOf is the mark of a write of st whose value has SHA-256 sum.
func (e *Engine) markOf(st desired.State, sum [sha256.Size]byte) kvrecord.Mark {
	return kvrecord.Mark{Owner: e.o.Owner, Digest: kvrecord.DigestOf(sum, st.Metadata, rule(st))}
}

// marked returns the metadata to send for st: the sidecar's, plus the
// mark when records are kept in metadata.
func (e *Engine) marked(st desired.State, sum [sha256.Size]byte) []byte {
	if e.o.Owner == "" {
		return st.Metadata
	}
	return kvrecord.Add(st.Metadata, e.markOf(st, sum))
}

// hashSum decodes a state's hex hash; ok is false when it has none.
func hashSum(h string) (sum [sha256.Size]byte, ok bool) {
	if len(h) != hex.EncodedLen(sha256.Size) {
		return sum, false
	}
	if _, err := hex.Decode(sum[:], []byte(h)); err != nil {
		return sum, false
	}
	return sum, true
}

// driftNone: the key holds what was asked, or its content is unknown.
const driftNone metrics.DriftKind = ""

// compareRemote says whether the key of st, a state with content, holds
// what st asks for according to l; when not, how it differs.
func (e *Engine) compareRemote(l *listing, st desired.State) (same bool, kind metrics.DriftKind) {
	rk, ok := l.get(st.Key)
	switch {
	case !ok:
		return false, metrics.DriftMissing
	case !rk.marked:
		return false, metrics.DriftUnmarked
	case !rk.ours || rk.expiring:
		return false, metrics.DriftOverwritten
	}
	sum, ok := hashSum(st.Hash)
	if !ok {
		return false, driftNone // content unknown: written, as without a listing
	}
	if kvrecord.DigestOf(sum, st.Metadata, rule(st)) != rk.digest {
		return false, metrics.DriftOverwritten
	}
	return true, driftNone
}

// adopt records in the store a key the listing vouches for, so the
// daemon's comparisons between listings find it unchanged. A TTL key's
// write time is when its listed expiration says it was written.
func adopt(st desired.State, rk remoteKey, now time.Time) state.Record {
	rec := newRecord(st, st.Hash, st.Size, now)
	if rec.ExpirationTTL > 0 && rk.expiration > 0 {
		rec.Written = time.Unix(rk.expiration-rec.ExpirationTTL, 0)
	}
	return rec
}

// claim records, as an intent mark, a key the listing says this sync
// wrote that the store does not know and that this pass will not find
// unchanged: a held-back key, or one about to be written again. Its file
// may go away before the next listing (the write then never happens:
// the file vanished), and the daemon, which compares changes with the
// store alone between listings, must still know the key is its to
// delete. A mark of a key written meanwhile costs at most a redundant
// write. mu is held.
func (e *Engine) claim(p *pass, key string) {
	rk, ok := p.remote.get(key)
	if !ok || !rk.ours || rk.expiring || e.o.DryRun {
		return
	}
	if _, had, err := e.recordOf(p, key); err != nil || had {
		return
	}
	e.stage(p, key, state.Record{Pending: true, Written: e.o.Now()})
}
