package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Leader counts leader election, per sync (a bounded label: the syncs of
// the config). Build it with NewLeader only when election is on, so a
// process without election exports none of it.
type Leader struct {
	leading     *prometheus.GaugeVec   // sync
	transitions *prometheus.CounterVec // sync, to
	seconds     *leaderSeconds
}

// The values of kvsync_leader_transitions_total's "to" label.
const (
	ToLeader  = "leader"
	ToStandby = "standby"
)

// NewLeader creates the election's collectors and registers them with
// reg; now is the clock of kvsync_leader_seconds_total.
func NewLeader(reg prometheus.Registerer, now func() time.Time) *Leader {
	l := &Leader{
		leading: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvsync_leader", Help: "1 while this process holds the sync's Lease and writes it, 0 while it stands by.",
		}, []string{"sync"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvsync_leader_transitions_total", Help: "Changes of this process's role for the sync, by the role taken.",
		}, []string{"sync", "to"}),
		seconds: &leaderSeconds{
			desc: prometheus.NewDesc("kvsync_leader_seconds_total", "Seconds this process has held the sync's Lease.", []string{"sync"}, nil),
			now:  now,
			m:    map[string]*leaderTime{},
		},
	}
	reg.MustRegister(l.leading, l.transitions, l.seconds)
	return l
}

// Standby declares sync, standing by, before its first election: its
// gauge reads 0 rather than being absent.
func (l *Leader) Standby(sync string) {
	l.leading.WithLabelValues(sync).Set(0)
	l.transitions.WithLabelValues(sync, ToLeader)
	l.transitions.WithLabelValues(sync, ToStandby)
	l.seconds.set(sync, false)
}

// Lead records that this process now leads sync.
func (l *Leader) Lead(sync string) {
	l.leading.WithLabelValues(sync).Set(1)
	l.transitions.WithLabelValues(sync, ToLeader).Inc()
	l.seconds.set(sync, true)
}

// Stop records that this process no longer leads sync.
func (l *Leader) Stop(sync string) {
	l.leading.WithLabelValues(sync).Set(0)
	l.transitions.WithLabelValues(sync, ToStandby).Inc()
	l.seconds.set(sync, false)
}

// leaderSeconds is a counter read at scrape time, so time spent leading
// counts while it is spent, not only when leadership ends.
type leaderSeconds struct {
	desc *prometheus.Desc
	now  func() time.Time
	mu   sync.Mutex
	m    map[string]*leaderTime
}

type leaderTime struct {
	total float64
	since time.Time // zero while standing by
}

func (s *leaderSeconds) set(sync string, leading bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.m[sync]
	if t == nil {
		t = &leaderTime{}
		s.m[sync] = t
	}
	now := s.now()
	if !t.since.IsZero() {
		t.total += now.Sub(t.since).Seconds()
		t.since = time.Time{}
	}
	if leading {
		t.since = now
	}
}

func (s *leaderSeconds) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc }

func (s *leaderSeconds) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for sync, t := range s.m {
		v := t.total
		if !t.since.IsZero() {
			v += now.Sub(t.since).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(s.desc, prometheus.CounterValue, v, sync)
	}
}
