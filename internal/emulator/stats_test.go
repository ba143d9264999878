package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
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

// TestStatsPerOperation pins what an end-to-end test reads from StatsPath
// to count each kind of request and the keys each wrote or deleted: every
// request lands in exactly one (op, status) counter, and the key counters
// move by the keys the request applied, not by requests.
func TestStatsPerOperation(t *testing.T) {
	h := newHarness(t, Options{})
	ns := h.nsURL("")
	cases := []struct {
		name         string
		setup        func() // run before the request, uncounted
		method, url  string
		body         string
		op           string
		status       int
		keysOp       string // the Keys entry that moves; "" = none
		keys         int
		written, del int // the moves of keys_written and keys_deleted
	}{
		{"put raw", nil, "PUT", ns + "/values/a", "v", OpPut, 200, OpPut, 1, 1, 0},
		{"put multipart", nil, "PUT", ns + "/values/b", string(jsonForm("v", `{"m":1}`)), OpPut, 200, OpPut, 1, 1, 0},
		{"bulk write of three", nil, "PUT", ns + "/bulk", `[{"key":"c","value":"v"},{"key":"d","value":"v"},{"key":"e","value":"v"}]`, OpBulkPut, 200, OpBulkPut, 3, 3, 0},
		{"bulk write with a key refused by the per-key limit", func() { h.e.SetFaults(Faults{PerKeyWriteLimit: true}) },
			"PUT", ns + "/bulk", `[{"key":"f","value":"1"},{"key":"f","value":"2"}]`, OpBulkPut, 200, OpBulkPut, 1, 1, 0},
		{"put refused by the per-key limit", nil, "PUT", ns + "/values/f", "v", OpPut, 429, "", 0, 0, 0},
		{"refused bulk write", func() { h.e.SetFaults(Faults{}) }, "PUT", ns + "/bulk", `[{"value":"v"}]`, OpBulkPut, 400, "", 0, 0, 0},
		{"list", nil, "GET", ns + "/keys", "", OpList, 200, "", 0, 0, 0},
		{"list with a prefix and a limit", nil, "GET", ns + "/keys?prefix=a&limit=10", "", OpList, 200, "", 0, 0, 0},
		{"list with a bad limit", nil, "GET", ns + "/keys?limit=1", "", OpList, 400, "", 0, 0, 0},
		{"read", nil, "GET", ns + "/values/a", "", OpGet, 200, "", 0, 0, 0},
		{"read of a missing key", nil, "GET", ns + "/values/zz", "", OpGet, 404, "", 0, 0, 0},
		{"read metadata", nil, "GET", ns + "/metadata/b", "", OpGetMetadata, 200, "", 0, 0, 0},
		{"delete", nil, "DELETE", ns + "/values/a", "", OpDelete, 200, OpDelete, 1, 0, 1},
		{"delete of a missing key", nil, "DELETE", ns + "/values/zz", "", OpDelete, 200, OpDelete, 1, 0, 1},
		{"bulk delete of two", nil, "POST", ns + "/bulk/delete", `["c","d"]`, OpBulkDelete, 200, OpBulkDelete, 2, 0, 2},
		{"deprecated bulk delete", nil, "DELETE", ns + "/bulk", `["e"]`, OpBulkDeleteDeprecated, 200, OpBulkDeleteDeprecated, 1, 0, 1},
		{"no such route", nil, "GET", ns + "/nothing", "", OpUnknown, 404, "", 0, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			before := getStats(t, h, "")
			var hdr []string
			if strings.HasPrefix(tc.body, "--kvsyncboundary") {
				hdr = []string{"Content-Type", formCT}
			}
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			if r := h.do(tc.method, tc.url, body, hdr...); r.status != tc.status {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.url, r.status, r.body, tc.status)
			}
			after := getStats(t, h, "")
			moved := map[RequestCount]int{}
			for _, rc := range after.Requests {
				moved[RequestCount{Op: rc.Op, Status: rc.Status}] += rc.Count
			}
			for _, rc := range before.Requests {
				moved[RequestCount{Op: rc.Op, Status: rc.Status}] -= rc.Count
			}
			for k, n := range moved {
				want := 0
				if k.Op == tc.op && k.Status == tc.status {
					want = 1
				}
				if n != want {
					t.Errorf("counter %s %d moved by %d, want %d", k.Op, k.Status, n, want)
				}
			}
			if _, ok := moved[RequestCount{Op: tc.op, Status: tc.status}]; !ok {
				t.Errorf("no counter %s %d", tc.op, tc.status)
			}
			if after.Total-before.Total != 1 {
				t.Errorf("total moved by %d", after.Total-before.Total)
			}
			if w := after.Writes - before.Writes; (w == 1) != isWriteOp(tc.op) {
				t.Errorf("writes moved by %d for %s", w, tc.op)
			}
			for _, op := range []string{OpPut, OpBulkPut, OpDelete, OpBulkDelete, OpBulkDeleteDeprecated, OpList, OpGet} {
				want := 0
				if op == tc.keysOp {
					want = tc.keys
				}
				if got := after.Keys[op] - before.Keys[op]; got != want {
					t.Errorf("keys[%s] moved by %d, want %d", op, got, want)
				}
			}
			if w, d := after.KeysWritten-before.KeysWritten, after.KeysDeleted-before.KeysDeleted; w != tc.written || d != tc.del {
				t.Errorf("keys_written moved by %d, keys_deleted by %d, want %d and %d", w, d, tc.written, tc.del)
			}
		})
	}

	t.Run("the JSON field names", func(t *testing.T) {
		r := h.do(http.MethodGet, h.srv.URL+StatsPath, nil)
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(r.body, &raw); err != nil {
			t.Fatalf("%s: %v", r.body, err)
		}
		for _, f := range []string{"requests", "total", "writes", "rate_limited", "keys", "keys_written", "keys_deleted"} {
			if _, ok := raw[f]; !ok {
				t.Errorf("field %q missing from %s", f, r.body)
			}
		}
		var keys map[string]int
		if err := json.Unmarshal(raw["keys"], &keys); err != nil || keys[OpBulkPut] != 4 || keys[OpPut] != 2 || keys[OpDelete] != 2 || keys[OpBulkDelete] != 2 || keys[OpBulkDeleteDeprecated] != 1 || len(keys) != 5 {
			t.Errorf("keys %s (%v)", raw["keys"], err)
		}
		var reqs []map[string]any
		if err := json.Unmarshal(raw["requests"], &reqs); err != nil || len(reqs) == 0 {
			t.Fatalf("requests %s (%v)", raw["requests"], err)
		}
		if reqs[0]["op"] == nil || reqs[0]["status"] == nil || reqs[0]["count"] == nil || len(reqs[0]) != 3 {
			t.Errorf("a request counter reads %v, want op, status and count", reqs[0])
		}
		h.e.ResetCounts()
		if st := getStats(t, h, ""); st.Total != 0 || len(st.Keys) != 0 || st.KeysWritten != 0 || st.KeysDeleted != 0 {
			t.Errorf("after ResetCounts: %+v", st)
		}
	})
}

// TestCountedBeforeAnswered: a client that has read its whole answer finds
// its request counted, which an end-to-end test reading StatsPath right
// after the client exits relies on. A value bigger than the server's write
// buffer, sent with its length, is what lets the client finish before the
// handler returns.
func TestCountedBeforeAnswered(t *testing.T) {
	for _, size := range []int{10, 256 << 10} {
		t.Run(fmt.Sprintf("value of %d bytes", size), func(t *testing.T) {
			h := newHarness(t, Options{})
			if err := h.e.Seed(testAccount, testNS, "big", Entry{Value: bytes.Repeat([]byte("x"), size)}); err != nil {
				t.Fatal(err)
			}
			for i := range 50 {
				if r := h.do("GET", valuesURL(h, "big"), nil); r.status != 200 || len(r.body) != size {
					t.Fatalf("GET: %d, %d bytes", r.status, len(r.body))
				}
				if n := h.e.Count(OpGet, 200); n != i+1 {
					t.Fatalf("after %d answered reads, %d counted", i+1, n)
				}
			}
		})
	}
}
