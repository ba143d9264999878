package emulator

import (
	"cmp"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
)

// StatsPath serves the emulator's request counters as JSON, for benchmarks
// and scripts that run the emulator as a separate process and cannot call
// Counts. It is NOT part of Cloudflare's API: nothing like it exists on
// api.cloudflare.com, and it lives outside PathPrefix so that no client of
// the real API can mistake it for one.
//
// GET StatsPath answers a Stats object. With the query parameters account and
// namespace, Stats.Namespace also reports that namespace's live keys.
//
// A request is counted when its status is sent, before any byte of its
// answer, so a client that has its answer (or a script that waited for the
// client to exit) always finds it in the counters.
//
// The endpoint only observes: it is not counted, not charged to the budget
// and not subject to injected faults. It needs the same credentials as the
// API (what it reveals, traffic and sizes, is the namespace owner's
// business); HealthPath is the endpoint that needs none. Any other method
// answers 405.
const StatsPath = "/__emulator/stats"

// Stats is the body of GET StatsPath.
type Stats struct {
	// Requests are the counters, sorted by op then status; status -1 counts
	// connections dropped without a reply (StatusDropped).
	Requests []RequestCount `json:"requests"`
	// Total is the sum of every counter.
	Total int `json:"total"`
	// Writes sums the write operations (put, bulk_put, delete, bulk_delete,
	// bulk_delete_deprecated) whatever their status.
	Writes int `json:"writes"`
	// RateLimited counts answers with status 429 (budget or per-key limit).
	RateLimited int `json:"rate_limited"`
	// Keys counts, per write operation, the keys requests wrote or deleted
	// (Emulator.KeyCount); ops with none are absent. It is where a test
	// finds "30 keys written" when they went in one bulk_put request.
	Keys map[string]int `json:"keys"`
	// KeysWritten sums Keys of put and bulk_put; KeysDeleted of delete,
	// bulk_delete and bulk_delete_deprecated.
	KeysWritten int `json:"keys_written"`
	KeysDeleted int `json:"keys_deleted"`
	// Namespace is present when account and namespace were asked for.
	Namespace *NamespaceStats `json:"namespace,omitempty"`
}

// RequestCount is one counter of Stats.
type RequestCount struct {
	Op     string `json:"op"`
	Status int    `json:"status"`
	Count  int    `json:"count"`
}

// NamespaceStats describes a namespace's live (unexpired) keys.
type NamespaceStats struct {
	Account string `json:"account"`
	ID      string `json:"id"`
	// Keys is the number of live keys; 0 for a namespace never written.
	Keys int `json:"keys"`
	// ValueBytes is the sum of the live values' sizes.
	ValueBytes int64 `json:"value_bytes"`
	// MetadataKeys is how many live keys carry metadata.
	MetadataKeys int `json:"metadata_keys"`
}

// isWriteOp reports whether op changes data.
func isWriteOp(op string) bool {
	switch op {
	case OpPut, OpBulkPut, OpDelete, OpBulkDelete, OpBulkDeleteDeprecated:
		return true
	}
	return false
}

// Stats returns the counters and, when account and namespace are not empty,
// that namespace's key statistics.
func (e *Emulator) Stats(account, namespace string) Stats {
	// One lock for both maps, so that the request and key counters describe
	// the same instant.
	e.countMu.Lock()
	counts, keyCounts := maps.Clone(e.counts), maps.Clone(e.keyCounts)
	e.countMu.Unlock()
	st := Stats{Requests: make([]RequestCount, 0, len(counts)), Keys: make(map[string]int)}
	for k, n := range counts {
		st.Requests = append(st.Requests, RequestCount{Op: k.Op, Status: k.Status, Count: n})
		st.Total += n
		if isWriteOp(k.Op) {
			st.Writes += n
		}
		if k.Status == http.StatusTooManyRequests {
			st.RateLimited += n
		}
	}
	for op, n := range keyCounts {
		if n == 0 {
			continue
		}
		st.Keys[op] = n
		if op == OpPut || op == OpBulkPut {
			st.KeysWritten += n
		} else {
			st.KeysDeleted += n
		}
	}
	slices.SortFunc(st.Requests, func(a, b RequestCount) int {
		return cmp.Or(cmp.Compare(a.Op, b.Op), cmp.Compare(a.Status, b.Status))
	})
	if account != "" && namespace != "" {
		ns := e.store.stats(nsRef{account, namespace})
		ns.Account, ns.ID = account, namespace
		st.Namespace = &ns
	}
	return st
}

// stats sums a namespace's live keys without copying values, so it stays
// cheap for 100,000 keys and for values kept only in the data directory.
func (s *store) stats(ref nsRef) NamespaceStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out NamespaceStats
	ns := s.nss[ref]
	if ns == nil || ns.deleted {
		return out
	}
	now := s.now().Unix()
	for _, it := range ns.keys {
		if it.expired(now) {
			continue
		}
		out.Keys++
		if s.log != nil {
			out.ValueBytes += it.size
		} else {
			out.ValueBytes += int64(len(it.value))
		}
		if it.meta != nil {
			out.MetadataKeys++
		}
	}
	return out
}

// serveStats answers GET StatsPath.
func (e *Emulator) serveStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	body, err := json.Marshal(e.Stats(q.Get("account"), q.Get("namespace")))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(body)
}
