package desired

import (
	"slices"
	"testing"
)

func keys(states []State) []string {
	var out []string
	for _, st := range states {
		out = append(out, st.Key)
	}
	return out
}

// Each hands States over in byte order without reordering the caller's
// slice, passes a Walk's verdict on, and counts a snapshot its consumer
// stopped reading as incomplete.
func TestEach(t *testing.T) {
	unsorted := []State{{Key: "a0"}, {Key: "a/x"}, {Key: "a-b"}}
	walked := func(yield func(State) bool) (bool, string) {
		for _, k := range []string{"a-b", "a/x"} {
			if !yield(State{Key: k}) {
				return false, ErrStopped.Error()
			}
		}
		return false, "unreadable: /r/d"
	}
	tests := []struct {
		name         string
		snap         Snapshot
		stopAfter    int // 0: read all
		want         []string
		wantComplete bool
		wantReason   string
	}{
		{"states sorted in a copy", Snapshot{States: unsorted, Complete: true}, 0, []string{"a-b", "a/x", "a0"}, true, ""},
		{"states incomplete", Snapshot{States: unsorted[:1], Reason: "gone"}, 0, []string{"a0"}, false, "gone"},
		{"states stopped", Snapshot{States: unsorted, Complete: true}, 1, []string{"a-b"}, false, ErrStopped.Error()},
		{"walk", Snapshot{Walk: walked}, 0, []string{"a-b", "a/x"}, false, "unreadable: /r/d"},
		{"walk stopped", Snapshot{Walk: walked}, 1, []string{"a-b"}, false, ErrStopped.Error()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := keys(tc.snap.States)
			var got []string
			complete, reason := tc.snap.Each(func(st State) bool {
				got = append(got, st.Key)
				return tc.stopAfter == 0 || len(got) < tc.stopAfter
			})
			if !slices.Equal(got, tc.want) || complete != tc.wantComplete || reason != tc.wantReason {
				t.Errorf("Each: %v, %v, %q; want %v, %v, %q", got, complete, reason, tc.want, tc.wantComplete, tc.wantReason)
			}
			if after := keys(tc.snap.States); !slices.Equal(before, after) {
				t.Errorf("Each reordered the caller's States: %v -> %v", before, after)
			}
		})
	}
}

func TestCollect(t *testing.T) {
	s := Snapshot{Trigger: TriggerManual, Walk: func(yield func(State) bool) (bool, string) {
		yield(State{Key: "k1"})
		yield(State{Key: "k2"})
		return true, ""
	}}
	got := s.Collect()
	if got.Walk != nil || !got.Complete || got.Trigger != TriggerManual || !slices.Equal(keys(got.States), []string{"k1", "k2"}) {
		t.Errorf("Collect = %+v", got)
	}
}
