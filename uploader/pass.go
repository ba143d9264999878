package uploader

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/state"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

type phase int

const (
	phaseWrites phase = iota
	phaseDeletes
	phaseDone
)

// pass is one full sync in progress. Its fields are guarded by Engine.mu.
type pass struct {
	trigger desired.Trigger
	started time.Time
	rep     Report
	// left counts the queued keys whose outcome is still unknown.
	left   int
	sealed bool // every state of the snapshot was offered
	// unrecorded: the store held no record under the prefix when the pass
	// started, so offer skips its per-key lookup (see offer).
	unrecorded bool
	phase      phase
	cands      []candidate
	done       chan struct{}
	// listed is closed once the listing of a fresh store is done (nil
	// when there is none; see reconcile).
	listed <-chan struct{}
	// remote is the listing this pass compares with (nil: the store);
	// adopted collects the keys it vouches for that the store lacks, and
	// drift the keys the store called unchanged that it does not show so.
	remote  *listing
	adopted map[string]state.Record
	drift   map[metrics.DriftKind]int
	drifted []string // the first few, for the log
	// merged is what the merge found in the store for the key being
	// offered (Engine.recordOf).
	merged merged
}

// startPass offers every state of s as one pass, as the scan hands them
// over, and seals it. The states are merged with the store's records and
// the listing on the way (merge.go), so the pass holds its deletion
// candidates, not the tree; deletions wait until its writes are settled
// (advance), and happen only when the scan was complete.
func (e *Engine) startPass(ctx context.Context, s desired.Snapshot, sync bool) *pass {
	p := &pass{trigger: s.Trigger, started: time.Now(), done: make(chan struct{})}
	remote, info, listErr := e.takeListing(ctx)
	p.remote, p.rep.List = remote, info
	if listErr != nil {
		p.rep.List.Err = listErr
		e.log.Warn("full sync could not list the namespace; it compares with the state store alone", "trigger", s.Trigger, "err", listErr)
	}
	var treeKeys chan<- []string
	if e.o.Owner == "" {
		p.listed, treeKeys = e.reconcile(ctx)
	}
	if has, err := e.hasRecords(); err == nil {
		p.unrecorded = !has
	}
	m := e.newMerge(remote)

	e.mu.Lock()
	e.openPasses++
	e.filling++
	clear(e.rejected) // a full sync retries what failed permanently
	clear(e.held)     // and states its held-back keys afresh
	clear(e.rechecked)
	e.gauges()
	e.mu.Unlock()

	interrupted := error(nil)
	var inTree []string // only for reconcile's count
	n := 0
	e.walkWith(remote, m)
	complete, reason := s.Each(func(st desired.State) bool {
		if st.Deleted {
			return true // a deletion in a snapshot is a key absent from it: the merge finds it
		}
		if n++; n%releaseEvery == 0 {
			e.releasePages()
		}
		found := m.tree(st.Key)
		if treeKeys != nil {
			inTree = append(inTree, st.Key)
		}
		e.mu.Lock()
		p.merged = found
		if err := e.offer(ctx, st, p); err != nil {
			interrupted = err
		}
		p.merged = merged{}
		e.mu.Unlock()
		return interrupted == nil
	})
	e.walkWith(nil, nil)
	if treeKeys != nil {
		treeKeys <- inTree
	}
	incomplete := ""
	if !complete {
		incomplete = reason
		if reason == "" {
			incomplete = "part of the tree could not be read"
		}
	}
	cands, refused, err := m.finish(complete, reason)
	if err != nil {
		refused = "reading the state store failed: " + err.Error() + "; nothing deleted"
		cands = nil
	}
	if interrupted != nil {
		// Not every key was offered: absent keys prove nothing now.
		cands = nil
		refused = "full sync interrupted before every key was queued (" + interrupted.Error() + "); nothing deleted"
	}
	if refused != "" {
		e.log.Warn("full sync will delete nothing", "trigger", s.Trigger, "reason", refused)
	}
	e.mu.Lock()
	p.cands, p.rep.DeletesRefused, p.rep.Incomplete = cands, refused, incomplete
	e.flushAdopted(p)
	p.sealed = true
	e.filling--
	e.poke()
	if p.left == 0 {
		e.advance(p)
	}
	e.mu.Unlock()
	return p
}

// errFound stops hasRecords' iteration at the first record.
var errFound = errors.New("found")

// hasRecords reports whether the store holds any record under the prefix.
func (e *Engine) hasRecords() (bool, error) {
	err := e.o.Store.ForEach(e.o.Scope, e.o.Prefix, func(string, state.Record) error { return errFound })
	if errors.Is(err, errFound) {
		return true, nil
	}
	return false, err
}

// reconcile lists the namespace once after the store was found fresh, to
// report keys that exist in KV but not in the tree: they are not known to be
// kvsync's, so they are left alone. Every key of the tree is rewritten
// anyway, since without records nothing can be compared, so the writes need
// not wait for the listing (a page per kvapi.MaxListLimit keys, one after
// the other): it runs beside the pass, which sends the tree's keys, in
// order, on the returned channel once its walk ended; done, nil when
// there is nothing to list, is closed once it is logged. Only a sync
// without records in metadata on a fresh store does this, and only it
// holds the tree's keys for the length of a walk.
func (e *Engine) reconcile(ctx context.Context) (done <-chan struct{}, treeKeys chan<- []string) {
	e.mu.Lock()
	run := e.o.Reconcile && !e.reconciled
	e.reconciled = true
	e.mu.Unlock()
	if !run {
		return nil, nil
	}
	d := make(chan struct{})
	keys := make(chan []string, 1)
	go func() {
		defer close(d)
		e.listForeign(ctx, keys)
	}()
	return d, keys
}

// listForeign lists the namespace under the prefix and logs how many keys
// the tree, whose keys come on treeKeys in order, does not have.
func (e *Engine) listForeign(ctx context.Context, treeKeys <-chan []string) {
	var listed []string
	err := kvapi.ListAll(ctx, e.o.KV, e.o.Namespace, e.o.Prefix, func(k kvapi.KeyInfo) error {
		listed = append(listed, k.Name)
		return nil
	})
	var tree []string
	select {
	case tree = <-treeKeys:
	case <-ctx.Done():
	}
	if err != nil {
		e.log.Warn("state store was fresh; listing the namespace failed, keys of the tree are rewritten anyway", "prefix", e.o.Prefix, "err", err)
		return
	}
	foreign := 0
	for _, k := range listed {
		if _, ok := slices.BinarySearch(tree, k); !ok {
			foreign++
		}
	}
	e.log.Info("state store was fresh: every key of the tree is rewritten; keys in KV but not in the tree are not known to be kvsync's and are left alone",
		"prefix", e.o.Prefix, "listed", len(listed), "not_in_tree", foreign, "in_tree", len(tree))
}

// advance moves a pass whose queued keys are all settled to its next phase.
// mu is held.
func (e *Engine) advance(p *pass) {
	if p.phase == phaseWrites {
		p.phase = phaseDeletes
		e.queueDeletes(p)
		if p.left > 0 {
			return
		}
	}
	e.finishPass(p)
}

// queueDeletes queues the pass's deletions, after its writes, only when all
// of them succeeded (rclone's --delete-after) and within MaxDeletes.
func (e *Engine) queueDeletes(p *pass) {
	cands := p.cands
	p.cands = nil
	if len(cands) == 0 || p.rep.DeletesRefused != "" {
		return
	}
	if p.rep.Failed > 0 {
		p.rep.DeletesRefused = "writes failed in this full sync; deletions wait for one in which every write succeeds"
		e.log.Warn("full sync deletes nothing", "trigger", p.trigger, "failed_writes", p.rep.Failed, "deletions_postponed", len(cands))
		return
	}
	// A key queued or in flight since the snapshot has a newer intent.
	live := cands[:0]
	for _, c := range cands {
		if !e.busy(c.key) && e.deferred[c.key] == nil {
			live = append(live, c)
		}
	}
	if r := e.capRefusal(len(live)); r != "" {
		p.rep.DeletesRefused = r
		e.log.Error(r, "trigger", p.trigger, "prefix", e.o.Prefix)
		e.countDelete(metrics.DeleteKept, len(live))
		return
	}
	for _, c := range live {
		rec := c.rec
		it := &item{st: desired.State{Key: c.key, Deleted: true}, expect: &rec, remote: c.remote, passes: []*pass{p}}
		p.left++
		_ = e.submit(context.Background(), it, false) // never blocks, never fails unblocked
	}
}

func (e *Engine) finishPass(p *pass) {
	p.phase = phaseDone
	e.openPasses--
	close(p.done)
	p.remote = nil // a listing is trusted for one pass only
	e.logDrift(p)
	r := p.rep
	e.log.Info("full sync finished", "trigger", p.trigger, "written", r.Written, "unchanged", r.Unchanged,
		"deleted", r.Deleted, "kept", r.Kept, "failed", r.Failed, "held_back", r.HeldBack, "bytes", r.Bytes,
		"deletes_refused", r.DeletesRefused, "duration", time.Since(p.started).Round(time.Millisecond))
	e.lastPassClean = r.err() == nil
	if e.watchedKept > 0 {
		e.log.Info("full sync finished: deletions kept over max_deletes were reconsidered by it", "kept_since_last_full_sync", e.watchedKept, "deletes_refused", r.DeletesRefused)
	}
	e.watchedDeletes, e.watchedKept = 0, 0
	e.noteCaughtUp()
	e.broadcast()
	// A full sync looked up every key, so the whole store is resident;
	// between full syncs only changed keys are, so let it go.
	e.releasePages()
}

// releaseEvery is how many states a full sync takes between drops of the
// store's pages from the process: its merge and lookups touch every page
// of the file in turn (about 330 bytes a key: 330 MB for a million), and
// a mapped page once touched counts in the RSS until it is dropped.
const releaseEvery = 1 << 15

// releasePages drops the store's pages from the resident set, when the
// store can (*state.Store on Linux).
func (e *Engine) releasePages() {
	if r, ok := e.o.Store.(pageReleaser); ok {
		if err := r.ReleasePages(); err != nil {
			e.log.Debug("releasing the state store's pages failed", "err", err)
		}
	}
}

// pageReleaser is a Store whose pages can be dropped from the process's
// resident set (*state.Store).
type pageReleaser interface{ ReleasePages() error }

var _ pageReleaser = (*state.Store)(nil)

// adoptedBatch bounds the records a pass adopts in one store transaction.
const adoptedBatch = 1000

// adopt notes that the listing vouches for st's key, recording it in the
// store unless the store already says as much. mu is held.
func (e *Engine) adopt(p *pass, st desired.State, rk remoteKey) {
	if rec, ok, err := e.recordOf(p, st.Key); err == nil && ok && unchanged(st, rec, e.o.Now()) {
		e.restamp(p, st, rec)
		return
	}
	e.stage(p, st.Key, adopt(st, rk, e.o.Now()))
}

// stage adds a record the pass writes to the store in batches
// (flushAdopted), not one transaction a key. mu is held.
func (e *Engine) stage(p *pass, key string, rec state.Record) {
	if p.adopted == nil {
		p.adopted = make(map[string]state.Record)
	}
	p.adopted[key] = rec
	if len(p.adopted) >= adoptedBatch {
		e.flushAdopted(p)
	}
}

// flushAdopted stores the records a pass adopted. A failure costs only
// comparisons: the keys are compared with the next listing again.
func (e *Engine) flushAdopted(p *pass) {
	if len(p.adopted) == 0 {
		return
	}
	if err := e.o.Store.PutBatch(e.o.Scope, p.adopted); err != nil {
		e.storeErr(metrics.StoreRecord)
		e.log.Warn("recording keys the listing shows unchanged failed; the daemon may rewrite them on their next change", "keys", len(p.adopted), "err", err)
	}
	p.adopted = nil
}

// noteDrift counts a key the store called unchanged that the listing
// shows otherwise: deleted or overwritten behind kvsync's back. mu is
// held.
func (e *Engine) noteDrift(p *pass, key string, kind metrics.DriftKind) {
	if p.drift == nil {
		p.drift = map[metrics.DriftKind]int{}
	}
	p.drift[kind]++
	p.rep.Drift++
	if len(p.drifted) < 5 {
		p.drifted = append(p.drifted, key)
	}
	if e.o.Metrics != nil {
		e.o.Metrics.Drift(kind, 1)
	}
}

// logDrift says once per pass which keys were found changed behind
// kvsync's back.
func (e *Engine) logDrift(p *pass) {
	if p.rep.Drift == 0 {
		return
	}
	e.log.Warn("keys of the tree were deleted or overwritten in KV behind kvsync's back; written again",
		"keys", p.rep.Drift, "missing", p.drift[metrics.DriftMissing], "overwritten", p.drift[metrics.DriftOverwritten],
		"unmarked", p.drift[metrics.DriftUnmarked], "first", p.drifted)
}
