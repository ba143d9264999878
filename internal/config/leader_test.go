package config

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
	"time"
)

func TestDefaultLeaseName(t *testing.T) {
	a := DefaultLeaseName("ns1", "site/")
	if !strings.HasPrefix(a, "kvsync-") || len(a) != len("kvsync-")+16 {
		t.Fatalf("DefaultLeaseName = %q, want kvsync- and 16 hex digits", a)
	}
	cases := []struct {
		name       string
		ns, prefix string
		same       bool
	}{
		{"same inputs", "ns1", "site/", true},
		{"other prefix", "ns1", "blog/", false},
		{"other namespace", "ns2", "site/", false},
		// Without the length prefixes these two would hash "ns1site/".
		{"boundary moved", "ns1s", "ite/", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := DefaultLeaseName(tc.ns, tc.prefix); (got == a) != tc.same {
				t.Errorf("DefaultLeaseName(%q, %q) = %q vs %q; same = %v, want %v", tc.ns, tc.prefix, got, a, got == a, tc.same)
			}
		})
	}
}

func TestFillLeaderDefaults(t *testing.T) {
	noFile := func(string) ([]byte, error) { return nil, fs.ErrNotExist }
	saFile := func(p string) ([]byte, error) {
		if p == ServiceAccountNamespaceFile {
			return []byte("from-file\n"), nil
		}
		return nil, fs.ErrNotExist
	}
	host := func() (string, error) { return "host-1", nil }
	cases := []struct {
		name          string
		env           map[string]string
		readFile      func(string) ([]byte, error)
		set           LeaderElection
		wantNamespace string
		wantIdentity  string
	}{
		{"downward API", map[string]string{"POD_NAMESPACE": "env-ns", "POD_NAME": "pod-a"}, saFile, LeaderElection{Enabled: true}, "env-ns", "pod-a"},
		{"service account file and host name", nil, saFile, LeaderElection{Enabled: true}, "from-file", "host-1"},
		{"configured wins", map[string]string{"POD_NAMESPACE": "env-ns", "POD_NAME": "pod-a"}, saFile, LeaderElection{Enabled: true, Namespace: "cfg", Identity: "me"}, "cfg", "me"},
		{"nothing found", nil, noFile, LeaderElection{Enabled: true}, "", "host-1"},
		{"disabled: nothing filled", map[string]string{"POD_NAMESPACE": "env-ns"}, saFile, LeaderElection{}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{LeaderElection: tc.set, Syncs: []Sync{{NamespaceID: "ns1", Prefix: "p/"}, {NamespaceID: "ns1", Prefix: "q/", LeaseName: "mine"}}}
			c.fillLeaderDefaults(func(k string) string { return tc.env[k] }, tc.readFile, host)
			if c.LeaderElection.Namespace != tc.wantNamespace || c.LeaderElection.Identity != tc.wantIdentity {
				t.Errorf("namespace, identity = %q, %q; want %q, %q", c.LeaderElection.Namespace, c.LeaderElection.Identity, tc.wantNamespace, tc.wantIdentity)
			}
			wantLease := ""
			if tc.set.Enabled {
				wantLease = DefaultLeaseName("ns1", "p/")
			}
			if c.Syncs[0].LeaseName != wantLease || c.Syncs[1].LeaseName != "mine" {
				t.Errorf("lease names = %q, %q; want %q, mine", c.Syncs[0].LeaseName, c.Syncs[1].LeaseName, wantLease)
			}
		})
	}
}

func TestLeaderValidation(t *testing.T) {
	head := []string{"api:", "  account_id: acc", "syncs:", "  - dir: /srv/a", "    namespace_id: ns", "    prefix: a/"}
	enabled := func(extra ...string) []byte {
		lines := append(append([]string{}, head...), "leader_election:", "  enabled: true", "  namespace: apps", "  identity: pod-a")
		return y(append(lines, extra...)...)
	}
	cases := []struct {
		name  string
		data  []byte
		field string
		kind  error
		msg   string
	}{
		{"zero lease_duration", enabled("  lease_duration: 0"), "leader_election.lease_duration", ErrInvalid, "must be above 0"},
		{"negative retry_period", enabled("  retry_period: -1s"), "leader_election.retry_period", ErrInvalid, "must be above 0"},
		{"renew not shorter than lease", enabled("  lease_duration: 10s", "  renew_deadline: 10s"), "leader_election.renew_deadline", ErrConflict, "not shorter than lease_duration"},
		{"renew plus retry not shorter than lease", enabled("  lease_duration: 12s", "  renew_deadline: 10s", "  retry_period: 2s"), "leader_election.renew_deadline", ErrConflict, "plus retry_period"},
		// 2s × 1.2 = 2.4s: client-go refuses a deadline of 2.4s or less.
		{"retry against jitter", enabled("  renew_deadline: 2400ms", "  retry_period: 2s"), "leader_election.retry_period", ErrConflict, "1.2 × retry_period"},
		{"bad namespace", y(append(append([]string{}, head...), "leader_election:", "  enabled: true", "  namespace: Apps_1", "  identity: x")...), "leader_election.namespace", ErrInvalid, "not a valid namespace"},
		{"bad lease name", y(append(append([]string{}, head...), "    lease_name: Site/Lease")...), "syncs[0].lease_name", ErrInvalid, "not a valid Lease name"},
		{"duplicate lease name", y(append(append([]string{}, head...), "    lease_name: one", "  - dir: /srv/b", "    namespace_id: ns", "    prefix: b/", "    lease_name: one")...), "syncs[1].lease_name", ErrConflict, "already the Lease of syncs[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.data, "kvsync.yaml")
			var found *FieldError
			for _, e := range unjoin(err) {
				if fe := (*FieldError)(nil); errors.As(e, &fe) && fe.Field == tc.field {
					found = fe
				}
			}
			if found == nil {
				t.Fatalf("no error for %s in %v", tc.field, err)
			}
			if !errors.Is(found, tc.kind) || !strings.Contains(found.Error(), tc.msg) {
				t.Errorf("error %q (kind %v), want %v containing %q", found, found.Kind, tc.kind, tc.msg)
			}
		})
	}

	t.Run("valid and defaulted", func(t *testing.T) {
		c, err := Parse(enabled("  lease_duration: 3s", "  renew_deadline: 2s", "  retry_period: 500ms"), "kvsync.yaml")
		if err != nil {
			t.Fatal(err)
		}
		le := c.LeaderElection
		if le.LeaseDuration != 3*time.Second || le.RenewDeadline != 2*time.Second || le.RetryPeriod != 500*time.Millisecond {
			t.Errorf("durations = %v", le)
		}
		if c.Syncs[0].LeaseName != DefaultLeaseName("ns", "a/") {
			t.Errorf("lease_name = %q, want the default", c.Syncs[0].LeaseName)
		}
	})
	t.Run("disabled: no namespace needed", func(t *testing.T) {
		c, err := Parse(y(head...), "kvsync.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if c.LeaderElection.Enabled || c.LeaderElection.LeaseDuration != 15*time.Second {
			t.Errorf("leader_election = %+v, want off with the 15s default", c.LeaderElection)
		}
	})
}

// unjoin flattens errors.Join's tree.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	if err == nil {
		return nil
	}
	return []error{err}
}
