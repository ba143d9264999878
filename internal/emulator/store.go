package emulator

import (
	"bytes"
	"encoding/base64"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// nsRef names a namespace: account id and namespace id.
type nsRef struct{ account, id string }

// item is one stored key. In memory mode the value is held in value; with a
// data directory only its location in the log is (off, size), so 25 MiB
// values do not pile up in RAM.
type item struct {
	value  []byte
	off    int64
	size   int64
	recLen int64 // bytes of the log record holding the value (0 in memory mode)
	meta   []byte
	exp    int64
}

func (it *item) expired(now int64) bool { return it.exp != 0 && now >= it.exp }

type namespace struct {
	title   string
	deleted bool
	keys    map[string]*item

	// sorted caches the key names in byte order for listing. Writers (who
	// hold store.mu exclusively) set it to nil; readers (holding store.mu
	// shared) rebuild it under sortMu.
	sortMu sync.Mutex
	sorted []string
}

func (ns *namespace) sortedKeys() []string {
	ns.sortMu.Lock()
	defer ns.sortMu.Unlock()
	if ns.sorted == nil {
		s := make([]string, 0, len(ns.keys))
		for k := range ns.keys {
			s = append(s, k)
		}
		slices.Sort(s) // Go compares strings bytewise: UTF-8 byte order.
		ns.sorted = s
	}
	return ns.sorted
}

// Kinds of mutation; they double as log record kinds.
const (
	recPut      byte = 1
	recDelete   byte = 2
	recNSUpsert byte = 3
	recNSDelete byte = 4
)

// mutation is one change to a namespace.
type mutation struct {
	kind  byte
	key   string
	value []byte
	meta  []byte
	exp   int64
	title string
}

// loc is where the log put a mutation.
type loc struct {
	off, size, recLen int64
}

var errNamespaceDeleted = errors.New("namespace deleted")

// store holds every namespace, optionally backed by a log.
type store struct {
	mu     sync.RWMutex
	now    func() time.Time
	logger *slog.Logger
	nss    map[nsRef]*namespace
	log    *wal // nil in memory mode
	// frozen holds the namespaces whose listings are frozen (see
	// Emulator.FreezeListings). It is never persisted: a stale listing is a
	// test's doing, not data.
	frozen map[nsRef]*frozenListing
}

func openStore(dir string, now func() time.Time, logger *slog.Logger) (*store, error) {
	s := &store{now: now, logger: logger, nss: make(map[nsRef]*namespace)}
	if dir == "" {
		return s, nil
	}
	w, err := openWAL(dir, logger)
	if err != nil {
		return nil, err
	}
	// applyOne keeps only value locations once s.log is set.
	s.log = w
	err = w.load(func(ref nsRef, m mutation, l loc) {
		ns := s.nss[ref]
		if ns == nil {
			ns = &namespace{title: ref.id, keys: make(map[string]*item)}
			s.nss[ref] = ns
		}
		s.applyOne(ns, m, l)
	})
	if err != nil {
		w.f.Close()
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maybeCompactLocked()
	return s, nil
}

// apply logs (durably) and then applies mutations to one namespace,
// creating it on first use. It refuses a deleted namespace.
func (s *store) apply(ref nsRef, muts []mutation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(ref, muts)
}

func (s *store) applyLocked(ref nsRef, muts []mutation) error {
	ns := s.nss[ref]
	if ns != nil && ns.deleted {
		return errNamespaceDeleted
	}
	var locs []loc
	if s.log != nil {
		var err error
		if locs, err = s.log.append(ref, muts); err != nil {
			s.logger.Error("emulator: persisting a write failed", "account", ref.account, "namespace", ref.id, "err", err)
			return err
		}
	}
	if ns == nil {
		ns = &namespace{title: ref.id, keys: make(map[string]*item)}
		s.nss[ref] = ns
	}
	for i, m := range muts {
		var l loc
		if locs != nil {
			l = locs[i]
		}
		s.applyOne(ns, m, l)
	}
	if s.log != nil {
		s.maybeCompactLocked()
	}
	return nil
}

// applyOne changes the in-memory state; l is the log location (zero in
// memory mode). Values are retained only in memory mode.
func (s *store) applyOne(ns *namespace, m mutation, l loc) {
	switch m.kind {
	case recPut:
		old, existed := ns.keys[m.key]
		it := &item{meta: m.meta, exp: m.exp}
		if s.log != nil {
			it.off, it.size, it.recLen = l.off, l.size, l.recLen
			if existed {
				s.log.live -= old.recLen
			}
			s.log.live += it.recLen
		} else {
			it.value = m.value
		}
		ns.keys[m.key] = it
		if !existed {
			ns.sorted = nil
		}
	case recDelete:
		if old, ok := ns.keys[m.key]; ok {
			if s.log != nil {
				s.log.live -= old.recLen
			}
			delete(ns.keys, m.key)
			ns.sorted = nil
		}
	case recNSUpsert:
		ns.title = m.title
		ns.deleted = false
	case recNSDelete:
		if s.log != nil {
			for _, it := range ns.keys {
				s.log.live -= it.recLen
			}
		}
		ns.deleted = true
		ns.keys = make(map[string]*item)
		ns.sorted = nil
	}
}

func (s *store) maybeCompactLocked() {
	if !s.log.needsCompaction() {
		return
	}
	if err := s.log.compact(s.nss, s.now().Unix()); err != nil {
		s.logger.Error("emulator: compacting the log failed; keeping the old one", "err", err)
	}
}

// readValue returns an item's bytes. Callers hold s.mu (shared suffices).
func (s *store) readValue(it *item) ([]byte, error) {
	if s.log == nil {
		return it.value, nil
	}
	return s.log.readAt(it.off, it.size)
}

// lookup returns a live item copy with its value, or nil.
func (s *store) get(ref nsRef, key string, withValue bool) (*Entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns := s.nss[ref]
	if ns == nil {
		return nil, nil
	}
	if ns.deleted {
		return nil, errNamespaceDeleted
	}
	it := ns.keys[key]
	if it == nil || it.expired(s.now().Unix()) {
		return nil, nil
	}
	ent := &Entry{Metadata: it.meta, Expiration: it.exp}
	if withValue {
		v, err := s.readValue(it)
		if err != nil {
			return nil, err
		}
		ent.Value = v
	}
	return ent, nil
}

// listedKey is one key of a listing page, in the schema's shape.
type listedKey struct {
	Name       string `json:"name"`
	Expiration int64  `json:"expiration,omitempty"`
	Metadata   rawObj `json:"metadata,omitempty"`
}

// rawObj is raw JSON that is omitted when empty.
type rawObj []byte

func (r rawObj) MarshalJSON() ([]byte, error) { return r, nil }

const cursorTag = "k1:"

func encodeCursor(lastKey string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorTag + lastKey))
}

func decodeCursor(c string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !bytes.HasPrefix(b, []byte(cursorTag)) {
		return "", false
	}
	return string(b[len(cursorTag):]), true
}

// list returns up to limit live keys with prefix that sort after the key
// named by after, and the cursor for the next page ("" when none remain).
// A frozen listing (freezeListing) is answered from its snapshot; whether
// the namespace exists is always decided live.
func (s *store) list(ref nsRef, prefix, after string, limit int) ([]listedKey, string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns := s.nss[ref]
	if ns != nil && ns.deleted {
		return nil, "", errNamespaceDeleted
	}
	if fz := s.frozen[ref]; fz != nil {
		out, cursor := cutPage(fz.names, func(k string) (listedKey, bool) { return fz.keys[k], true }, prefix, after, limit)
		return out, cursor, nil
	}
	if ns == nil {
		return []listedKey{}, "", nil
	}
	now := s.now().Unix()
	out, cursor := cutPage(ns.sortedKeys(), func(k string) (listedKey, bool) {
		it := ns.keys[k]
		if it.expired(now) {
			return listedKey{}, false
		}
		return listedKey{Name: k, Expiration: it.exp, Metadata: rawObj(it.meta)}, true
	}, prefix, after, limit)
	return out, cursor, nil
}

// cutPage cuts one page out of names (sorted bytewise): the next limit
// names with prefix after the key named by after, less those entry reports
// not live. A dead (expired) name still takes its place in the page, as a
// tombstone does on the Workers binding (kv-api.md §2.5), so a page may
// hold fewer keys than the limit, or none, and still carry a cursor: a
// client that stops on a short or empty page instead of on the empty
// cursor loses keys, here as there.
func cutPage(names []string, entry func(string) (listedKey, bool), prefix, after string, limit int) ([]listedKey, string) {
	out := []listedKey{}
	start := max(prefix, after)
	i := sort.SearchStrings(names, start)
	for i < len(names) && after != "" && names[i] <= after {
		i++
	}
	scanned := 0
	for ; i < len(names) && scanned < limit; i++ {
		k := names[i]
		if !strings.HasPrefix(k, prefix) {
			break
		}
		scanned++
		if lk, live := entry(k); live {
			out = append(out, lk)
		}
	}
	cursor := ""
	if scanned == limit && i < len(names) && strings.HasPrefix(names[i], prefix) {
		// The cursor names the last key looked at, live or not.
		cursor = encodeCursor(names[i-1])
	}
	return out, cursor
}

// frozenListing is a namespace's listing as it was when it was frozen.
type frozenListing struct {
	names []string // bytewise order
	keys  map[string]listedKey
}

// freezeListing snapshots ref's live keys; from then on list answers from
// the snapshot until thawListing. Freezing a frozen namespace takes a new
// snapshot of the live keys.
func (s *store) freezeListing(ref nsRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fz := &frozenListing{keys: make(map[string]listedKey)}
	if ns := s.nss[ref]; ns != nil && !ns.deleted {
		now := s.now().Unix()
		for _, k := range ns.sortedKeys() {
			it := ns.keys[k]
			if it.expired(now) {
				continue
			}
			fz.names = append(fz.names, k)
			// Cloned: nothing mutates a stored item's metadata today, but
			// the snapshot must not change if that ever stops being true.
			fz.keys[k] = listedKey{Name: k, Expiration: it.exp, Metadata: rawObj(bytes.Clone(it.meta))}
		}
	}
	if s.frozen == nil {
		s.frozen = make(map[nsRef]*frozenListing)
	}
	s.frozen[ref] = fz
}

// thawListing makes list answer from the live keys again.
func (s *store) thawListing(ref nsRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.frozen, ref)
}

func (s *store) snapshot(ref nsRef) map[string]Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]Entry)
	ns := s.nss[ref]
	if ns == nil || ns.deleted {
		return out
	}
	now := s.now().Unix()
	for k, it := range ns.keys {
		if it.expired(now) {
			continue
		}
		v, err := s.readValue(it)
		if err != nil {
			s.logger.Error("emulator: reading a value for a snapshot failed", "key", k, "err", err)
			continue
		}
		out[k] = Entry{Value: bytes.Clone(v), Metadata: bytes.Clone(it.meta), Expiration: it.exp}
	}
	return out
}

// nsInfo is a namespace in the schema's shape.
type nsInfo struct {
	ID                  string `json:"id"`
	Title               string `json:"title"`
	SupportsURLEncoding bool   `json:"supports_url_encoding"`
}

// namespaces returns the live namespaces of an account.
func (s *store) namespaces(account string) []nsInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []nsInfo
	for ref, ns := range s.nss {
		if ref.account == account && !ns.deleted {
			out = append(out, nsInfo{ID: ref.id, Title: ns.title, SupportsURLEncoding: true})
		}
	}
	return out
}

// namespace returns a live namespace's info.
func (s *store) namespace(ref nsRef) (nsInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns := s.nss[ref]
	if ns == nil || ns.deleted {
		return nsInfo{}, false
	}
	return nsInfo{ID: ref.id, Title: ns.title, SupportsURLEncoding: true}, true
}

// titleTakenLocked reports whether another live namespace of the account has title.
func (s *store) titleTakenLocked(ref nsRef, title string) bool {
	for r, ns := range s.nss {
		if r.account == ref.account && r.id != ref.id && !ns.deleted && ns.title == title {
			return true
		}
	}
	return false
}

func (s *store) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return nil
	}
	return s.log.close()
}
