package emulator

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// getStats fetches StatsPath with the harness's credentials.
func getStats(t *testing.T, h *harness, query string) Stats {
	t.Helper()
	r := h.do(http.MethodGet, h.srv.URL+StatsPath+query, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s%s: %d %s", StatsPath, query, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var st Stats
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("undecodable stats %q: %v", r.body, err)
	}
	return st
}

func TestStatsCountsAndNamespace(t *testing.T) {
	for _, persist := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "data dir"}[persist], func(t *testing.T) {
			opts := Options{Faults: Faults{Budget: 4, BudgetWindow: time.Minute}}
			if persist {
				opts.DataDir = t.TempDir()
			}
			h := newHarness(t, opts)
			bulk := `[{"key":"a","value":"12345"},{"key":"b","value":"xy","metadata":{"m":1}},{"key":"c","value":"z","expiration_ttl":60}]`
			if r := h.do("PUT", h.nsURL("/bulk"), []byte(bulk), "Content-Type", "application/json"); r.status != 200 {
				t.Fatalf("bulk: %d %s", r.status, r.body)
			}
			if r := h.do("PUT", valuesURL(h, "d"), []byte("0123456789")); r.status != 200 {
				t.Fatalf("put: %d %s", r.status, r.body)
			}
			if r := h.do("GET", valuesURL(h, "a"), nil); r.status != 200 {
				t.Fatalf("get: %d", r.status)
			}
			if r := h.do("DELETE", valuesURL(h, "d"), nil); r.status != 200 {
				t.Fatalf("delete: %d", r.status)
			}
			// The budget of 4 is spent: this one is refused.
			if r := h.do("PUT", valuesURL(h, "e"), []byte("v")); r.status != 429 {
				t.Fatalf("over budget: %d", r.status)
			}
			// "c" expires; stats count live keys only, like list does.
			h.clock.Advance(61 * time.Second)

			// Reading stats many times neither counts nor spends budget.
			for range 3 {
				getStats(t, h, "")
			}
			st := getStats(t, h, "?account="+testAccount+"&namespace="+testNS)
			want := []RequestCount{
				{OpBulkPut, 200, 1}, {OpDelete, 200, 1}, {OpGet, 200, 1}, {OpPut, 200, 1}, {OpPut, 429, 1},
			}
			if len(st.Requests) != len(want) {
				t.Fatalf("requests %+v, want %+v", st.Requests, want)
			}
			for i := range want {
				if st.Requests[i] != want[i] {
					t.Errorf("requests[%d] = %+v, want %+v", i, st.Requests[i], want[i])
				}
			}
			if st.Total != 5 || st.Writes != 4 || st.RateLimited != 1 {
				t.Errorf("total %d writes %d rate_limited %d, want 5 4 1", st.Total, st.Writes, st.RateLimited)
			}
			wantNS := NamespaceStats{Account: testAccount, ID: testNS, Keys: 2, ValueBytes: 7, MetadataKeys: 1}
			if st.Namespace == nil || *st.Namespace != wantNS {
				t.Errorf("namespace %+v, want %+v", st.Namespace, wantNS)
			}
			if got := h.e.Count(OpUnknown, 0); got != 0 {
				t.Errorf("stats requests were counted as unknown: %d", got)
			}
		})
	}
}

func TestStatsUnknownNamespaceAndMethods(t *testing.T) {
	h := newHarness(t, Options{})
	st := getStats(t, h, "?account=acc&namespace=never")
	if st.Namespace == nil || st.Namespace.Keys != 0 || st.Total != 0 || len(st.Requests) != 0 {
		t.Errorf("stats of a fresh emulator: %+v", st)
	}
	if st := getStats(t, h, "?account=acc"); st.Namespace != nil {
		t.Errorf("namespace reported without a namespace id: %+v", st.Namespace)
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		r := h.do(m, h.srv.URL+StatsPath, []byte("{}"))
		if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: %d Allow %q", m, StatsPath, r.status, r.header.Get("Allow"))
		}
	}
	// The stats path under the API prefix is an ordinary unknown route.
	if r := h.do("GET", h.srv.URL+PathPrefix+StatsPath, nil); r.status != http.StatusNotFound || r.code() != 7000 {
		t.Errorf("GET %s%s: %d code %d", PathPrefix, StatsPath, r.status, r.code())
	}
}
