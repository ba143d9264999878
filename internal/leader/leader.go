// Package leader elects, per sync, the one kvsync process that writes it:
// the holder of a coordination.k8s.io/v1 Lease, through client-go's
// tools/leaderelection. Every other process with the same sync stands by.
//
// Run calls Lead while this process holds the Lease and cancels Lead's
// context when it stops holding it:
//
//   - when renewals fail for RenewDeadline (the API server is unreachable,
//     or someone else holds the Lease). RenewDeadline plus RetryPeriod is
//     shorter than LeaseDuration (config checks it), so Lead's context ends
//     before any other candidate may take the Lease over;
//   - when Run's own context ends (SIGTERM): Lead's context is cancelled
//     first, and only once Lead has returned, so nothing more is being
//     written, is the Lease released (client-go's ReleaseOnCancel), so a
//     standby takes over about a second later instead of LeaseDuration.
//
// client-go has no fencing and Workers KV no conditional write: a request
// that left before Lead's context ended may still reach KV afterwards.
// That window is the caller's to document (README, "Leader election").
//
// Permission errors are not retried: a Lease kvsync may not get, create or
// update (RBAC) ends Run with a *PermissionError naming the Lease, its
// namespace and the verb, where client-go alone would retry and log for
// ever.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	rl "k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/kvsync/kvsync/metrics"
)

// ErrNoAPIServer: election is on but no Kubernetes API server is
// configured (not in a pod, and no kubeconfig).
var ErrNoAPIServer = errors.New("no Kubernetes API server found")

// PermissionError is the API server refusing a verb on the Lease.
type PermissionError struct {
	Verb, Namespace, Lease, Identity string
	// Err is the API server's reply (a Forbidden or Unauthorized status).
	Err error
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("leader election: the API server refuses to %s Lease %q in namespace %q (identity %q): %v; grant get and update on this Lease and create on leases to kvsync's service account (deploy/kubernetes/rbac.yaml)",
		e.Verb, e.Lease, e.Namespace, e.Identity, e.Err)
}

func (e *PermissionError) Unwrap() error { return e.Err }

// RESTConfig finds the API server as client-go tools do: the in-cluster
// config in a pod, otherwise the kubeconfig of $KUBECONFIG (or
// ~/.kube/config). The error wraps ErrNoAPIServer when neither is there.
func RESTConfig() (*rest.Config, error) {
	cfg, err := rest.InClusterConfig()
	if err == nil {
		return cfg, nil
	}
	if !errors.Is(err, rest.ErrNotInCluster) {
		return nil, fmt.Errorf("leader election: in-cluster config: %w", err)
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, fmt.Errorf("leader election: %w: not in a pod, and no kubeconfig ($KUBECONFIG or ~/.kube/config)", ErrNoAPIServer)
		}
		return nil, fmt.Errorf("leader election: kubeconfig: %w", err)
	}
	return cfg, nil
}

// NewClient is the Lease client of cfg; kvsync needs no other API.
func NewClient(cfg *rest.Config, userAgent string) (coordinationv1client.LeasesGetter, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = userAgent
	c, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	return c, nil
}

// Options configure one election: one sync's Lease.
type Options struct {
	Client    coordinationv1client.LeasesGetter
	Namespace string
	Lease     string
	Identity  string
	// LeaseDuration, RenewDeadline, RetryPeriod: see config.LeaderElection.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Sync names the sync in logs and metrics.
	Sync    string
	Logger  *slog.Logger
	Metrics *metrics.Leader
	// Lead runs while this process holds the Lease. It must stop writing
	// and return promptly once ctx is done; Run never calls it again
	// before it has returned.
	Lead func(ctx context.Context)
}

// Run stands for the Lease until ctx is done, calling Lead at each term
// it wins, and then releases the Lease if it holds it. After ctx is done
// it never takes the Lease again. It returns nil when ctx ended it, a
// *PermissionError when the API server refused a verb on the Lease, or
// an error in Options.
func Run(ctx context.Context, o Options) error {
	if o.Client == nil || o.Lead == nil || o.Namespace == "" || o.Lease == "" || o.Identity == "" {
		return errors.New("leader election: Client, Lead, Namespace, Lease and Identity are required")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("sync", o.Sync, "lease", o.Namespace+"/"+o.Lease)
	if o.Metrics != nil {
		o.Metrics.Standby(o.Sync)
	}
	for ctx.Err() == nil {
		if err := term(ctx, o, log); err != nil {
			return err
		}
	}
	return nil
}

// term is one life of a client-go elector: it acquires, leads until it
// loses the Lease or ctx ends, and returns.
func term(ctx context.Context, o Options, log *slog.Logger) error {
	// The elector runs on a context of its own, cancelled only once Lead
	// has returned: client-go releases the Lease as soon as that context
	// ends, and must not while writes may still start.
	electCtx, stopElect := context.WithCancel(context.Background())
	defer stopElect()

	var (
		mu      sync.Mutex
		denied  *PermissionError
		leading chan struct{} // closed when Lead has returned; nil while standing by
	)
	lock := &guardedLock{
		Interface: &rl.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Lease},
			Client:     o.Client,
			LockConfig: rl.ResourceLockConfig{Identity: o.Identity},
		},
		denied: func(verb string, err error) {
			mu.Lock()
			if denied == nil {
				denied = &PermissionError{Verb: verb, Namespace: o.Namespace, Lease: o.Lease, Identity: o.Identity, Err: err}
			}
			mu.Unlock()
			stopElect()
		},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   o.LeaseDuration,
		RenewDeadline:   o.RenewDeadline,
		RetryPeriod:     o.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            o.Lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				done := make(chan struct{})
				mu.Lock()
				leading = done
				mu.Unlock()
				defer close(done)
				// Lead ends with the term (client-go cancels lctx when
				// the renew deadline passes) or with Run's ctx.
				lctx, cancel := context.WithCancel(lctx)
				defer cancel()
				stop := context.AfterFunc(ctx, cancel)
				defer stop()
				log.Info("leading: this process writes the sync")
				if o.Metrics != nil {
					o.Metrics.Lead(o.Sync)
				}
				o.Lead(lctx)
				if o.Metrics != nil {
					o.Metrics.Stop(o.Sync)
				}
				log.Info("stopped leading: this process writes nothing more")
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != o.Identity {
					log.Info("standing by", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}

	ran := make(chan struct{})
	go func() {
		defer close(ran)
		le.Run(electCtx)
	}()
	select {
	case <-ran:
	case <-ctx.Done():
		// Stop writing first, then let client-go release the Lease.
		mu.Lock()
		done := leading
		mu.Unlock()
		if done != nil {
			<-done
		}
		stopElect()
		<-ran
	}
	// Lead may still be returning after a lost renewal: no new term
	// begins before it has.
	mu.Lock()
	done := leading
	mu.Unlock()
	if done != nil {
		<-done
	}
	mu.Lock()
	defer mu.Unlock()
	if denied != nil {
		return denied
	}
	return nil
}

// guardedLock reports a verb the API server refuses on the Lease, which
// client-go would only log and retry.
type guardedLock struct {
	rl.Interface
	denied func(verb string, err error)
}

func (g *guardedLock) check(verb string, err error) {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		g.denied(verb, err)
	}
}

func (g *guardedLock) Get(ctx context.Context) (*rl.LeaderElectionRecord, []byte, error) {
	rec, raw, err := g.Interface.Get(ctx)
	g.check("get", err)
	return rec, raw, err
}

func (g *guardedLock) Create(ctx context.Context, r rl.LeaderElectionRecord) error {
	err := g.Interface.Create(ctx, r)
	g.check("create", err)
	return err
}

func (g *guardedLock) Update(ctx context.Context, r rl.LeaderElectionRecord) error {
	err := g.Interface.Update(ctx, r)
	g.check("update", err)
	return err
}
