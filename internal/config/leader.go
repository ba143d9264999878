package config

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// LeaderElection makes one process at a time, among all those sharing a
// sync, write it: the holder of that sync's coordination.k8s.io/v1 Lease
// (package internal/leader). The others watch and are ready but write
// nothing. Off (the default), kvsync needs no Kubernetes API at all.
type LeaderElection struct {
	// Enabled turns election on. The API server is found as client-go
	// tools find it: the in-cluster config in a pod, else $KUBECONFIG.
	Enabled bool `yaml:"enabled"`
	// Namespace holds the Leases; default $POD_NAMESPACE, then the pod's
	// service account namespace (ServiceAccountNamespaceFile).
	Namespace string `yaml:"namespace"`
	// Identity names this process in the Leases; default $POD_NAME, then
	// the host name. Every candidate needs its own.
	Identity string `yaml:"identity"`
	// LeaseDuration is how long a standby waits, after the last renewal it
	// saw, before it takes a lease over.
	LeaseDuration time.Duration `yaml:"lease_duration"`
	// RenewDeadline is how long the leader keeps trying to renew before it
	// stops writing. It is shorter than LeaseDuration, so the leader stops
	// before anyone else may start.
	RenewDeadline time.Duration `yaml:"renew_deadline"`
	// RetryPeriod is the interval between attempts to acquire or renew.
	RetryPeriod time.Duration `yaml:"retry_period"`
}

// The election defaults are client-go's usual ones (kube-controller-manager's).
const (
	defaultLeaseDuration = 15 * time.Second
	defaultRenewDeadline = 10 * time.Second
	defaultRetryPeriod   = 2 * time.Second
	// leaderJitter is client-go's leaderelection.JitterFactor: a retry
	// waits up to RetryPeriod×leaderJitter, and client-go refuses a
	// RenewDeadline that is not longer than that.
	leaderJitter = 1.2
)

// ServiceAccountNamespaceFile is where a pod finds its own namespace.
const ServiceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// LeaseNamePrefix starts every default Lease name.
const LeaseNamePrefix = "kvsync-"

func defaultLeaderElection() LeaderElection {
	return LeaderElection{
		LeaseDuration: defaultLeaseDuration,
		RenewDeadline: defaultRenewDeadline,
		RetryPeriod:   defaultRetryPeriod,
	}
}

// DefaultLeaseName is the Lease of the sync writing prefix into namespace
// namespaceID: "kvsync-" and 16 hex digits of a SHA-256 over both, each
// preceded by its length so that no two pairs hash the same input. A
// prefix may hold any character, a Lease name only [a-z0-9.-]; and every
// process publishing the same tree to the same place must find the same
// Lease, so nothing local (a name, a directory) goes in.
func DefaultLeaseName(namespaceID, prefix string) string {
	h := sha256.New()
	for _, s := range []string{namespaceID, prefix} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	return LeaseNamePrefix + hex.EncodeToString(h.Sum(nil))[:16]
}

// fillLeaderDefaults fills the namespace, identity and Lease names of an
// enabled election from the environment and the pod.
func (c *Config) fillLeaderDefaults(getenv func(string) string, readFile func(string) ([]byte, error), hostname func() (string, error)) {
	le := &c.LeaderElection
	if !le.Enabled {
		return
	}
	if le.Namespace == "" {
		le.Namespace = getenv("POD_NAMESPACE")
	}
	if le.Namespace == "" {
		if b, err := readFile(ServiceAccountNamespaceFile); err == nil {
			le.Namespace = strings.TrimSpace(string(b))
		}
	}
	if le.Identity == "" {
		le.Identity = getenv("POD_NAME")
	}
	if le.Identity == "" {
		if h, err := hostname(); err == nil {
			le.Identity = h
		}
	}
	for i := range c.Syncs {
		if c.Syncs[i].LeaseName == "" && c.Syncs[i].NamespaceID != "" {
			c.Syncs[i].LeaseName = DefaultLeaseName(c.Syncs[i].NamespaceID, c.Syncs[i].Prefix)
		}
	}
}

// leader checks the election settings, with client-go's own rules for
// the durations, and the Lease names.
func (v *validator) leader(c *Config) {
	le := &c.LeaderElection
	for i, s := range c.Syncs {
		if s.LeaseName == "" {
			continue
		}
		p := indexPath("syncs", i) + ".lease_name"
		for _, msg := range validation.IsDNS1123Subdomain(s.LeaseName) {
			v.fail(p, ErrInvalid, "%q is not a valid Lease name: %s", s.LeaseName, msg)
		}
		for j := range i {
			if c.Syncs[j].LeaseName == s.LeaseName {
				v.fail(p, ErrConflict, "%q is already the Lease of syncs[%d]: one Lease elects one writer per sync", s.LeaseName, j)
				break
			}
		}
	}
	if !le.Enabled {
		return
	}
	const p = "leader_election."
	if le.Namespace == "" {
		v.fail(p+"namespace", ErrRequired, "required with leader_election.enabled: set it, $POD_NAMESPACE (the downward API), or run in a pod (%s)", ServiceAccountNamespaceFile)
	} else {
		for _, msg := range validation.IsDNS1123Label(le.Namespace) {
			v.fail(p+"namespace", ErrInvalid, "%q is not a valid namespace: %s", le.Namespace, msg)
		}
	}
	if le.Identity == "" {
		v.fail(p+"identity", ErrRequired, "required with leader_election.enabled: set it or $POD_NAME (no host name was found)")
	}
	positive := true
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"lease_duration", le.LeaseDuration}, {"renew_deadline", le.RenewDeadline}, {"retry_period", le.RetryPeriod}} {
		if d.v <= 0 {
			v.fail(p+d.name, ErrInvalid, "%s: must be above 0", formatDuration(d.v))
			positive = false
		}
	}
	if !positive {
		return
	}
	if le.RenewDeadline >= le.LeaseDuration {
		v.fail(p+"renew_deadline", ErrConflict, "%s is not shorter than lease_duration (%s): the leader must stop writing before another may take the lease", formatDuration(le.RenewDeadline), formatDuration(le.LeaseDuration))
	} else if le.RenewDeadline+le.RetryPeriod >= le.LeaseDuration {
		// client-go's renew loop starts its deadline a retry_period after
		// the last renewal: the leader stops writing up to renew_deadline
		// + retry_period after it, which must still be before the lease
		// can expire for anyone else.
		v.fail(p+"renew_deadline", ErrConflict, "%s plus retry_period (%s) is not shorter than lease_duration (%s): the leader may still write when another takes the lease", formatDuration(le.RenewDeadline), formatDuration(le.RetryPeriod), formatDuration(le.LeaseDuration))
	}
	if float64(le.RenewDeadline) <= leaderJitter*float64(le.RetryPeriod) {
		v.fail(p+"retry_period", ErrConflict, "%s: renew_deadline (%s) must be longer than %.1f × retry_period (a retry waits up to that, with client-go's jitter)", formatDuration(le.RetryPeriod), formatDuration(le.RenewDeadline), leaderJitter)
	}
}
