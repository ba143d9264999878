package kubetest

import (
	"context"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// TestKubeLeaseConflictAndRestart: a stale resourceVersion gets 409 (what
// the fake clientset does not do), the Lease survives a restart of the API
// server on the same port, and the service account's token authenticates
// but, under RBAC with nothing granted, may not read Leases.
func TestKubeLeaseConflictAndRestart(t *testing.T) {
	s := Start(t, Options{RBAC: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := coordinationv1client.NewForConfig(s.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	leases := c.Leases("default")
	created, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := "a"
	fresh := created.DeepCopy()
	fresh.Spec.HolderIdentity = &holder
	if _, err := leases.Update(ctx, fresh, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	stale := created.DeepCopy()
	other := "b"
	stale.Spec.HolderIdentity = &other
	if _, err := leases.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("update with a stale resourceVersion: %v, want 409 Conflict", err)
	}

	for _, stop := range []struct {
		name string
		stop func()
	}{{"stopped", s.StopAPIServer}, {"killed", s.KillAPIServer}} {
		stop.stop()
		if _, err := leases.Get(ctx, "probe", metav1.GetOptions{}); err == nil {
			t.Fatalf("Get succeeded with the API server %s", stop.name)
		}
		s.StartAPIServer()
	}
	got, err := leases.Get(ctx, "probe", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.HolderIdentity == nil || *got.Spec.HolderIdentity != "a" {
		t.Fatalf("holder after restart = %v, want a", got.Spec.HolderIdentity)
	}

	saCfg, err := clientcmd.BuildConfigFromFlags("", s.ServiceAccountKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := coordinationv1client.NewForConfig(saCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.Leases("default").Get(ctx, "probe", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("service account Get without a Role: %v, want 403 Forbidden", err)
	}
}
