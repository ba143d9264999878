package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/klog/v2"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/leader"
	"github.com/kvsync/kvsync/metrics"
	"github.com/kvsync/kvsync/uploader"
)

// election is what `kvsync run` needs to elect one writer per sync: the
// Lease client and the election's metrics. nil when leader_election is off.
type election struct {
	client coordinationv1client.LeasesGetter
	m      *metrics.Leader
}

// newElection finds the API server (in-cluster config, else $KUBECONFIG).
func (a *app) newElection() (*election, error) {
	// client-go logs through klog; send it to kvsync's logger.
	klog.SetSlogLogger(a.log.With("component", "client-go"))
	cfg, err := leader.RESTConfig()
	if err != nil {
		return nil, err
	}
	client, err := leader.NewClient(cfg, "kvsync/"+version)
	if err != nil {
		return nil, err
	}
	return &election{client: client, m: metrics.NewLeader(a.reg, time.Now)}, nil
}

// published is Published of the engine that writes now: the term's under
// leader_election, else the one engine.
func (u *unit) published(key string) bool {
	if e := u.term.Load(); e != nil {
		return e.Published(key)
	}
	return u.engine.Published(key)
}

// gate is the watcher's sink under leader_election: it hands the tree to
// the engine of the current term and drops it while this process stands
// by. A standby keeps its watches and known set, so it notices every
// change, but writes nothing; the full sync at the start of its next term
// covers what it dropped.
type gate struct {
	mu sync.Mutex
	e  *uploader.Engine
}

func (g *gate) set(e *uploader.Engine) {
	g.mu.Lock()
	g.e = e
	g.mu.Unlock()
}

func (g *gate) current() *uploader.Engine {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.e
}

func (g *gate) Snapshot(s desired.Snapshot) {
	if e := g.current(); e != nil {
		e.Snapshot(s)
	}
}

func (g *gate) Changed(states []desired.State) {
	if e := g.current(); e != nil {
		e.Changed(states)
	}
}

// startElected runs u's watcher at once, into a gate, and stands for u's
// Lease; each term won builds a fresh engine and runs a full sync.
func (s *supervisor) startElected(u *unit, r *runningUnit) {
	g := &gate{}
	ectx, stopElection := context.WithCancel(context.Background())
	r.stopElection = stopElection
	r.electionDone = make(chan error, 1)
	le := s.app.cfg.LeaderElection
	go func() {
		err := leader.Run(ectx, leader.Options{
			Client:        s.app.elect.client,
			Namespace:     le.Namespace,
			Lease:         u.cfg.LeaseName,
			Identity:      le.Identity,
			LeaseDuration: le.LeaseDuration,
			RenewDeadline: le.RenewDeadline,
			RetryPeriod:   le.RetryPeriod,
			Sync:          u.cfg.Name,
			Logger:        s.app.log,
			Metrics:       s.app.elect.m,
			Lead:          func(ctx context.Context) { s.lead(ctx, u, g) },
		})
		if err != nil {
			err = fmt.Errorf("sync %q: %w", u.cfg.Name, err)
			select {
			case s.fatal <- err:
			default:
			}
		}
		r.electionDone <- err
	}()
	sink := &firstSnapshotSink{Sink: g, ch: r.firstSnapshot, u: u, log: s.app.log,
		standby: func() bool { return g.current() == nil }}
	go func() {
		go s.listEvery(r.watcherCtx, u)
		err := u.watcher.Run(r.watcherCtx, sink)
		if err != nil {
			s.app.log.Error("watcher stopped", "sync", u.cfg.Name, "err", err)
		}
		r.watcherDone <- err
	}()
}

// lead is one term: a fresh engine that lists the namespace, then a full
// sync of the tree compared with that listing, so whatever another leader
// wrote (older content in a rolling update) is corrected and no unchanged
// key is rewritten; then every change, until ctx ends. Then it stops
// writing at once: requests waiting in the rate limiter or a 429 pause are
// cancelled, and queued changes are dropped, not flushed (the next
// leader's full sync covers them). A request already sent may still land.
func (s *supervisor) lead(ctx context.Context, u *unit, g *gate) {
	log := s.app.log.With("sync", u.cfg.Name)
	o := u.engineOptions
	// A new leader trusts no store: the namespace is the truth.
	o.Reconcile = true
	e, err := uploader.New(o)
	if err != nil {
		log.Error("leading: engine not built; this term writes nothing", "err", err)
		<-ctx.Done()
		return
	}
	runDone := make(chan struct{})
	go func() {
		e.Run(ctx) //nolint:errcheck // Run returns nil
		close(runDone)
	}()
	u.term.Store(e)
	if info, err := e.Prepare(ctx); err != nil {
		log.Error("leading: listing the namespace failed; the full sync compares with the state store alone", "err", err)
	} else if !info.Skipped {
		log.Info("leading: listed the namespace", "keys", info.Keys, "written_by_this_sync", info.Owned, "requests", info.Requests)
	}
	g.set(e)
	u.watcher.Rescan(desired.TriggerStartup)
	<-ctx.Done()
	g.set(nil)
	e.Abandon()
	<-runDone
	u.term.CompareAndSwap(e, nil)
}
