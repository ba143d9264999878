package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLeaderMetrics(t *testing.T) {
	now := time.Unix(1000, 0)
	reg := prometheus.NewRegistry()
	l := NewLeader(reg, func() time.Time { return now })

	steps := []struct {
		name      string
		do        func()
		advance   time.Duration
		leading   float64
		toLeader  float64
		toStandby float64
		seconds   float64
	}{
		{"declared standby", func() { l.Standby("site") }, 5 * time.Second, 0, 0, 0, 0},
		{"leading counts while it lasts", func() { l.Lead("site") }, 7 * time.Second, 1, 1, 0, 7},
		{"standby keeps the total", func() { l.Stop("site") }, 30 * time.Second, 0, 1, 1, 7},
		{"leading again adds", func() { l.Lead("site") }, 2 * time.Second, 1, 2, 1, 9},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			now = now.Add(st.advance)
			if got := testutil.ToFloat64(l.leading.WithLabelValues("site")); got != st.leading {
				t.Errorf("kvsync_leader = %v, want %v", got, st.leading)
			}
			if got := testutil.ToFloat64(l.transitions.WithLabelValues("site", ToLeader)); got != st.toLeader {
				t.Errorf("transitions to leader = %v, want %v", got, st.toLeader)
			}
			if got := testutil.ToFloat64(l.transitions.WithLabelValues("site", ToStandby)); got != st.toStandby {
				t.Errorf("transitions to standby = %v, want %v", got, st.toStandby)
			}
			want := "# HELP kvsync_leader_seconds_total Seconds this process has held the sync's Lease.\n# TYPE kvsync_leader_seconds_total counter\n" +
				"kvsync_leader_seconds_total{sync=\"site\"} " + fmt.Sprint(st.seconds) + "\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kvsync_leader_seconds_total"); err != nil {
				t.Error(err)
			}
		})
	}
}
