package uploader

import (
	"errors"
	"fmt"
	"sync"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/metrics"
)

// A full sync finds the keys to delete by a merge join, not by sets: the
// watcher hands the tree's states over in key byte order as it walks
// (desired.Snapshot.Walk), the store's records come in that order too
// (bbolt's cursor, a batch per read transaction), and so do the listing's
// keys (KV lists in byte order; list puts a listing that is not in it).
// Walking the three side by side, each key the store or the listing has
// and the tree does not shows up between two keys of the tree, so a pass
// holds the deletion candidates it found, not the tree, the store or the
// set of the tree's keys. The candidates are acted on only once the walk
// ended complete and every write settled (queueDeletes).

// storeBatch is how many records one read transaction of the merge takes.
const storeBatch = 512

// errBatchFull ends a read transaction whose batch is full.
var errBatchFull = errors.New("batch full")

// storeCursor reads the records under the prefix in key order, a batch at
// a time.
type storeCursor struct {
	s             Store
	scope, prefix string
	buf           []recordAt
	i             int
	// version is the store's Version before buf was read (versioned).
	version uint64
	// next is where the next batch starts; done: no batch is left.
	next string
	done bool
	err  error
}

type recordAt struct {
	key string
	rec state.Record
}

// peek returns the record at the cursor; ok is false past the last one
// or after an error (err).
func (c *storeCursor) peek() (recordAt, bool) {
	if c.i < len(c.buf) {
		return c.buf[c.i], true
	}
	if c.done || c.err != nil {
		return recordAt{}, false
	}
	c.buf, c.i = c.buf[:0], 0
	if v, ok := c.s.(versioned); ok {
		c.version = v.Version()
	}
	err := c.s.ForEachFrom(c.scope, c.prefix, c.next, func(k string, r state.Record) error {
		if len(c.buf) == storeBatch {
			c.next = k
			return errBatchFull
		}
		c.buf = append(c.buf, recordAt{k, r})
		return nil
	})
	switch {
	case errors.Is(err, errBatchFull):
	case err != nil:
		c.err = err
		return recordAt{}, false
	default:
		c.done = true
	}
	if c.i < len(c.buf) {
		return c.buf[c.i], true
	}
	return recordAt{}, false
}

// versioned is a Store that says when records read earlier may have
// changed (*state.Store).
type versioned interface{ Version() uint64 }

var _ versioned = (*state.Store)(nil)

// merge is one full sync's join of its tree with the store and the
// listing (see above). The goroutine offering the pass's states drives
// it; mu guards it, since the scan asks Recorded of it on its way.
type merge struct {
	mu    sync.Mutex
	e     *Engine
	l     *listing // nil: the store alone
	store storeCursor
	li    int // the listing's next key
	// last is the tree's last key; unordered: a key came before it, so
	// the merge cannot tell what is absent and deletes nothing.
	last      string
	started   bool
	unordered bool
	present   int
	// recorded counts the keys known as this sync's: in the store (and
	// not another's by the listing), or ours by the listing.
	recorded int
	cands    []candidate
	disowned []string
	// listed holds the keys only the listing knows as this sync's and no
	// file maps to: recorded as listed once the walk ended (finish).
	listed map[string]state.Record
}

func (e *Engine) newMerge(l *listing) *merge {
	return &merge{e: e, l: l, store: storeCursor{s: e.o.Store, scope: e.o.Scope, prefix: e.o.Prefix, next: e.o.Prefix}}
}

// merged is what the merge found in the store for a key of the tree: its
// record, if any, and whether that is still what the store holds (no
// write began since it was read), so the offer need not read it again.
type merged struct {
	key string
	rec state.Record
	ok  bool
	// read: the store can say whether it changed since version.
	read    bool
	version uint64
}

// tree takes the next key of the tree, which must not come before the
// last one.
func (m *merge) tree(key string) merged {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started && key <= m.last {
		if key < m.last {
			m.unordered = true
		}
		return merged{} // a key twice: seen
	}
	m.started, m.last = true, key
	m.present++
	m.upTo(key, false, false)
	s, ok := m.store.peek()
	if ok = ok && s.key == key; !ok {
		s.rec = state.Record{}
	}
	_, read := m.e.o.Store.(versioned)
	read = read && m.store.err == nil
	version := m.store.version
	m.upTo(key, false, true)
	return merged{key: key, rec: s.rec, ok: ok, read: read, version: version}
}

// lookup returns the store's record of key, which the scan is about to
// hand over: every key of the store and the listing before it is absent
// from the tree, since the tree comes in order, so the merge moves up to
// it (and not past it: the file may still turn out gone). known is false
// when the merge cannot tell (key is not ahead of it).
func (m *merge) lookup(key string) (rec state.Record, ok, known bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started && key <= m.last {
		return rec, false, false
	}
	m.upTo(key, false, false)
	if m.store.err != nil {
		return rec, false, false
	}
	s, sok := m.store.peek()
	if sok && s.key == key {
		return s.rec, true, true
	}
	return rec, false, true
}

// upTo visits the keys of the store and the listing before key, and key
// itself when include is set (it is in the tree), or all that are left at
// the end.
func (m *merge) upTo(key string, end, include bool) {
	for {
		s, sok := m.store.peek()
		var lk *listedKey
		if m.l != nil && m.li < len(m.l.keys) {
			lk = &m.l.keys[m.li]
		}
		var k string
		switch {
		case sok && lk != nil:
			k = min(s.key, lk.name)
		case sok:
			k = s.key
		case lk != nil:
			k = lk.name
		default:
			return
		}
		if !end && (k > key || k == key && !include) {
			return
		}
		inStore, inList := sok && s.key == k, lk != nil && lk.name == k
		var rk remoteKey
		if inList {
			rk = lk.remoteKey
			m.li++
		}
		if inStore {
			m.store.i++
		}
		m.visit(k, end || k != key, inStore, s.rec, inList, rk)
		if !end && k == key {
			return
		}
	}
}

// visit decides about one key of the store or the listing. With a
// listing, a key is this sync's when its record in KV says so, or when the
// store has a record of it and KV shows no mark at all (a key written by a
// kvsync from before records in metadata); a key whose mark is another's
// is not, and the store's record of it is dropped. A key kept until it
// expires (delete: expire) is left to expire. Under the keep policy only
// the store's keys are candidates: a key kept is no longer managed, though
// its mark stays.
func (m *merge) visit(key string, absent, inStore bool, rec state.Record, inList bool, rk remoteKey) {
	if inStore {
		if m.l != nil && inList && rk.marked && (!rk.ours || rk.expiring) {
			if !rk.ours && absent {
				m.disowned = append(m.disowned, key)
			}
			return
		}
		m.recorded++
		if absent {
			m.cands = append(m.cands, candidate{key: key, rec: rec})
		}
		return
	}
	if !inList || !rk.ours || rk.expiring {
		return
	}
	m.recorded++
	if !absent {
		return
	}
	// Only the listing knows it as this sync's and no file maps to it
	// now: recorded as listed, so that if it is not deleted in this pass
	// (a refusal, the keep policy, an incomplete walk), the daemon, which
	// compares later changes with its store, still knows it as its own
	// and what it holds. Keys of the tree get their records as they are
	// found unchanged or written.
	r := state.Record{Digest: rk.digest, ExpirationAt: rk.expiration, Written: m.e.o.Now()}
	if m.listed == nil {
		m.listed = map[string]state.Record{}
	}
	m.listed[key] = r
	if m.e.o.Delete != DeleteKeep {
		m.cands = append(m.cands, candidate{key: key, rec: r})
	}
}

// finish visits what is left of the store and the listing once the walk
// ended, and returns the keys a complete walk implies are gone, or says
// why none may be deleted.
func (m *merge) finish(complete bool, reason string) ([]candidate, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.e
	m.upTo("", true, false)
	if m.store.err != nil {
		e.storeErr(metrics.StoreRead)
		return nil, "", fmt.Errorf("listing recorded keys under prefix %q: %w", e.o.Prefix, m.store.err)
	}
	if complete && !m.unordered && len(m.disowned) > 0 {
		e.log.Info("keys kvsync recorded now carry another sync's record in KV; they are no longer this sync's", "keys", len(m.disowned), "first", m.disowned[0])
		e.forget(m.disowned)
	}
	if len(m.listed) > 0 && !e.o.DryRun {
		// Nothing is deleted from an incomplete walk, but what the
		// listing says is this sync's is kept, for the full syncs that
		// follow without a listing to delete when their walk is whole.
		if err := e.o.Store.PutBatch(e.o.Scope, m.listed); err != nil {
			e.storeErr(metrics.StoreRecord)
			// Unrecorded, they are still this sync's by their record in KV.
			for i := range m.cands {
				if _, ok := m.listed[m.cands[i].key]; ok {
					m.cands[i].rec, m.cands[i].remote = state.Record{Pending: true}, true
				}
			}
		}
	}
	switch {
	case !complete:
		if reason == "" {
			reason = "part of the tree could not be read"
		}
		return nil, fmt.Sprintf("snapshot incomplete (%s); keys absent from it are not deleted", reason), nil
	case m.unordered:
		return nil, "the scan's keys did not come in byte order, so which keys are gone is unknown; nothing deleted", nil
	case m.present == 0 && m.recorded > 0:
		return nil, fmt.Sprintf("the tree has no files but %d keys under prefix %q were written by kvsync (a volume not mounted yet?); nothing deleted", m.recorded, e.o.Prefix), nil
	}
	return m.cands, "", nil
}

// recordOf returns key's record in the store: the one the pass's merge just
// found for it (none, too), while no write began since it was read, else
// a read of the store. mu is held.
func (e *Engine) recordOf(p *pass, key string) (state.Record, bool, error) {
	if p != nil {
		return e.currentRecord(p.merged, key)
	}
	return e.o.Store.Get(e.o.Scope, key)
}

// currentRecord returns key's record: found's, the merge's, while no write
// began since it was read, else a read of the store.
func (e *Engine) currentRecord(found merged, key string) (state.Record, bool, error) {
	if found.key == key && found.read {
		if v := e.o.Store.(versioned); v.Version() == found.version {
			return found.rec, found.ok, nil
		}
	}
	return e.o.Store.Get(e.o.Scope, key)
}

// driftRecordOf returns key's record for telling drift: what the store
// said of the key when the listing was compared with it. The merge's
// record serves even when writes began since it was read: a write made
// after the listing cannot be drift the listing shows, so the older record
// is the better answer, and a first publish, whose every key the listing
// lacks, then reads no record per file while its own writes go on. mu is
// held.
func (e *Engine) driftRecordOf(p *pass, key string) (state.Record, bool, error) {
	if p != nil && p.merged.key == key && p.merged.read {
		return p.merged.rec, p.merged.ok, nil
	}
	return e.recordOf(p, key)
}

// Recorded returns the stamp the store records for key and the hash it
// vouches for, for the watcher's hash cache (watcher.Options.Recorded);
// ok is false when there is no record with a hash. While a full sync's
// scan asks, its merge answers, which reads the store in order a batch per
// transaction; otherwise (an event, a scan read whole) the store is read.
// A stamp read earlier is still true of the file it describes, whatever
// was written to the key since, so the merge's records need not be
// current here.
func (e *Engine) Recorded(key string) (stamp desired.Stamp, hash string, ok bool) {
	e.mu.Lock()
	m := e.walkingMerge
	e.mu.Unlock()
	var rec state.Record
	known := false
	if m != nil {
		rec, ok, known = m.lookup(key)
	}
	if !known {
		var err error
		if rec, ok, err = e.o.Store.Get(e.o.Scope, key); err != nil {
			return stamp, "", false
		}
	}
	if !ok || rec.Hash == "" {
		return stamp, "", false
	}
	return rec.Stamp, rec.Hash, true
}
