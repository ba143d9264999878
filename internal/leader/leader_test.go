package leader

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kvsync/kvsync/internal/kubetest"
	"github.com/kvsync/kvsync/metrics"
)

const (
	lease = 3 * time.Second
	renew = 2 * time.Second
	retry = 500 * time.Millisecond
)

// candidate runs one election and records its terms.
type candidate struct {
	id      string
	cancel  context.CancelFunc
	done    chan error
	leading atomic.Bool
	started chan time.Time
	m       *metrics.Leader
	reg     *prometheus.Registry
}

// testClient is a client of the API server that kubeconfig points at.
func testClient(t *testing.T, kubeconfig string) coordinationv1client.LeasesGetter {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := NewClient(cfg, "kvsync-test")
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func runCandidate(t *testing.T, kubeconfig, id string) *candidate {
	t.Helper()
	client := testClient(t, kubeconfig)
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{id: id, cancel: cancel, done: make(chan error, 1), started: make(chan time.Time, 10), reg: prometheus.NewRegistry()}
	c.m = metrics.NewLeader(c.reg, time.Now)
	go func() {
		c.done <- Run(ctx, Options{
			Client: client, Namespace: "default", Lease: "kvsync-test", Identity: id,
			LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
			Sync: "site", Metrics: c.m,
			Lead: func(ctx context.Context) {
				c.leading.Store(true)
				c.started <- time.Now()
				<-ctx.Done()
				c.leading.Store(false)
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-c.done
	})
	return c
}

// TestLeaderOneAtATimeAndRelease: of two candidates exactly one leads;
// cancelling it releases the Lease, so the other leads within about a
// second, not a lease duration; the one cancelled never leads again.
func TestLeaderOneAtATimeAndRelease(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{})
	a := runCandidate(t, s.AdminKubeconfig, "a")
	b := runCandidate(t, s.AdminKubeconfig, "b")

	var first, second *candidate
	select {
	case <-a.started:
		first, second = a, b
	case <-b.started:
		first, second = b, a
	case <-time.After(30 * time.Second):
		t.Fatal("nobody led within 30 s")
	}
	// Both keep trying for several retry periods: never two leaders.
	for range 8 {
		if a.leading.Load() && b.leading.Load() {
			t.Fatal("two leaders at once")
		}
		time.Sleep(retry)
	}
	if second.leading.Load() {
		t.Fatal("the second candidate leads while the first holds the Lease")
	}

	stopped := time.Now()
	first.cancel()
	if err := <-first.done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	first.done <- nil // for the cleanup
	select {
	case at := <-second.started:
		took := at.Sub(stopped)
		t.Logf("takeover after a release: %v (lease duration %v)", took, lease)
		if took >= lease {
			t.Errorf("takeover took %v: the Lease was not released", took)
		}
	case <-time.After(lease + 10*time.Second):
		t.Fatal("the standby did not take over after the release")
	}
	if n := len(first.started); n != 0 {
		t.Errorf("the cancelled candidate led %d more times", n)
	}
	if err := testutil.GatherAndCompare(first.reg, strings.NewReader(`# HELP kvsync_leader 1 while this process holds the sync's Lease and writes it, 0 while it stands by.
# TYPE kvsync_leader gauge
kvsync_leader{sync="site"} 0
# HELP kvsync_leader_transitions_total Changes of this process's role for the sync, by the role taken.
# TYPE kvsync_leader_transitions_total counter
kvsync_leader_transitions_total{sync="site",to="leader"} 1
kvsync_leader_transitions_total{sync="site",to="standby"} 1
`), "kvsync_leader", "kvsync_leader_transitions_total"); err != nil {
		t.Error(err)
	}
}

// TestLeaderLosesLeaseWhenAPIServerGoes: with the API server stopped, the
// leader's term ends within the renew deadline (plus a retry period), so
// before the lease could expire for anyone else; it leads again once the
// API server is back.
func TestLeaderLosesLeaseWhenAPIServerGoes(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{})
	var mu sync.Mutex
	var ended time.Time
	client := testClient(t, s.AdminKubeconfig)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan time.Time, 4)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			Client: client, Namespace: "default", Lease: "kvsync-test", Identity: "a",
			LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
			Lead: func(lctx context.Context) {
				started <- time.Now()
				<-lctx.Done()
				mu.Lock()
				ended = time.Now()
				mu.Unlock()
			},
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("did not lead")
	}
	// Renewals succeed every retry period; the last one is at most that
	// long before the stop.
	time.Sleep(2 * retry)
	stop := time.Now()
	s.StopAPIServer()
	deadline := time.Now().Add(lease + 5*time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		e := ended
		mu.Unlock()
		if !e.IsZero() {
			took := e.Sub(stop)
			t.Logf("term ended %v after the API server stopped (renew deadline %v, retry %v, lease %v)", took, renew, retry, lease)
			// The lease expires for others lease after the last renewal,
			// which was at most one retry period before stop.
			if took >= lease-retry {
				t.Errorf("term ended %v after the stop: the lease could have expired for others first", took)
			}
			s.StartAPIServer()
			select {
			case <-started:
			case <-time.After(30 * time.Second):
				t.Fatal("did not lead again once the API server was back")
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("term did not end with the API server stopped")
}

// TestLeaderPermissionError: under RBAC with no Role bound, Run ends at
// once with an error naming the verb, the Lease and its namespace.
func TestLeaderPermissionError(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{RBAC: true})
	client := testClient(t, s.ServiceAccountKubeconfig)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Options{
		Client: client, Namespace: "default", Lease: "kvsync-site", Identity: "a",
		LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
		Lead: func(context.Context) { t.Error("led without permission") },
	})
	var pe *PermissionError
	if !errors.As(err, &pe) {
		t.Fatalf("Run = %v, want a *PermissionError", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run only returned at the test's timeout")
	}
	if pe.Verb != "get" || pe.Lease != "kvsync-site" || pe.Namespace != "default" {
		t.Errorf("PermissionError = %+v, want get on default/kvsync-site", pe)
	}
	t.Logf("error: %v", err)
}
