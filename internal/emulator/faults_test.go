package emulator

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	h := newHarness(t, Options{Faults: Faults{Budget: 5, BudgetWindow: 3 * time.Second}})
	for i := range 5 {
		r := h.do("PUT", valuesURL(h, fmt.Sprint(i)), []byte("v"))
		if r.status != 200 {
			t.Fatalf("request %d within budget: %d %s", i, r.status, r.body)
		}
		if r.header.Get("Ratelimit-Policy") != `"default";q=5;w=3` || !strings.HasPrefix(r.header.Get("Ratelimit"), fmt.Sprintf(`"default";r=%d;`, 5-i)) {
			t.Errorf("request %d rate headers %q %q", i, r.header.Get("Ratelimit"), r.header.Get("Ratelimit-Policy"))
		}
		if r.header.Get("Retry-After") != "" {
			t.Errorf("Retry-After on a request within budget")
		}
	}
	r := h.do("GET", valuesURL(h, "0"), nil)
	if r.status != 429 || r.code() != 971 || r.header.Get("Retry-After") != "3" {
		t.Fatalf("over budget: %d %v %s", r.status, r.header, r.body)
	}
	// Every call stays blocked, whatever it is; Retry-After counts down, rounded up.
	h.clock.Advance(1500 * time.Millisecond)
	r = h.do("PUT", valuesURL(h, "blocked"), []byte("v"))
	if r.status != 429 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("while blocked: %d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	if _, ok := h.e.Snapshot(testAccount, testNS)["blocked"]; ok {
		t.Error("a blocked write took effect")
	}
	h.clock.Advance(1500 * time.Millisecond)
	for i := range 5 {
		if r := h.do("GET", valuesURL(h, "0"), nil); r.status != 200 {
			t.Fatalf("after the block, request %d: %d", i, r.status)
		}
	}
	if got := h.e.Count(OpGet, 429) + h.e.Count(OpPut, 429); got != 2 {
		t.Errorf("429s counted %d, want 2 (%v)", got, h.e.Counts())
	}
}

func TestBudgetSlidingWindowAndBlockFor(t *testing.T) {
	h := newHarness(t, Options{Faults: Faults{Budget: 3, BudgetWindow: 10 * time.Second, BlockFor: 30 * time.Second}})
	get := func() response { return h.do("GET", valuesURL(h, "k"), nil) }
	get()
	h.clock.Advance(5 * time.Second)
	get()
	h.clock.Advance(time.Second)
	get()
	h.clock.Advance(5 * time.Second) // the first request left the window
	if r := get(); r.status != 404 {
		t.Fatalf("request after the oldest slid out: %d", r.status)
	}
	if r := get(); r.status != 429 || r.header.Get("Retry-After") != "30" {
		t.Fatalf("fourth request inside the window: %d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	h.clock.Advance(29 * time.Second)
	if r := get(); r.status != 429 {
		t.Fatalf("still blocked: %d", r.status)
	}
	h.clock.Advance(time.Second)
	if r := get(); r.status != 404 {
		t.Fatalf("after BlockFor: %d", r.status)
	}
}

func TestPerKeyWriteLimit(t *testing.T) {
	h := newHarness(t, Options{Faults: Faults{PerKeyWriteLimit: true}})
	if r := h.do("PUT", valuesURL(h, "k"), []byte("1")); r.status != 200 {
		t.Fatal(r.status)
	}
	r := h.do("PUT", valuesURL(h, "k"), []byte("2"))
	if r.status != 429 || r.code() != 10022 || r.header.Get("Retry-After") != "1" {
		t.Fatalf("second write within a second: %d %s", r.status, r.body)
	}
	if r := h.do("DELETE", valuesURL(h, "k"), nil); r.status != 429 {
		t.Fatalf("delete within a second: %d", r.status)
	}
	if r := h.do("PUT", valuesURL(h, "other"), []byte("x")); r.status != 200 {
		t.Fatalf("another key: %d", r.status)
	}
	if r := h.do("GET", valuesURL(h, "k"), nil); string(r.body) != "1" {
		t.Fatalf("reads are not limited, value %q", r.body)
	}
	r = h.do("PUT", h.nsURL("/bulk"), []byte(`[{"key":"k","value":"b"},{"key":"fresh","value":"f"}]`))
	if r.status != 200 || string(r.env.Result) != `{"successful_key_count":1,"unsuccessful_keys":["k"]}` {
		t.Fatalf("bulk with a limited key: %d %s", r.status, r.body)
	}
	h.clock.Advance(time.Second)
	if r := h.do("PUT", valuesURL(h, "k"), []byte("3")); r.status != 200 {
		t.Fatalf("a second later: %d", r.status)
	}
	if string(h.e.Snapshot(testAccount, testNS)["k"].Value) != "3" {
		t.Error("value not updated")
	}
}

func TestServerErrorRate(t *testing.T) {
	run := func() []int {
		h := newHarness(t, Options{Faults: Faults{ServerErrorRate: 0.3, Seed: 42}})
		var statuses []int
		for i := range 600 {
			r := h.do("PUT", valuesURL(h, fmt.Sprint(i)), []byte("v"))
			statuses = append(statuses, r.status)
			if r.status >= 500 {
				if r.status != 500 && r.status != 502 && r.status != 503 || r.code() != 10001 {
					t.Fatalf("injected error %d %s", r.status, r.body)
				}
				if _, ok := h.e.Snapshot(testAccount, testNS)[fmt.Sprint(i)]; ok {
					t.Fatalf("a write answered %d took effect", r.status)
				}
			}
		}
		return statuses
	}
	a, b := run(), run()
	failed := 0
	seen := map[int]bool{}
	for _, s := range a {
		if s >= 500 {
			failed++
			seen[s] = true
		}
	}
	if failed < 130 || failed > 230 {
		t.Errorf("%d of 600 failed at rate 0.3", failed)
	}
	if len(seen) != 3 {
		t.Errorf("statuses used: %v", seen)
	}
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Error("the same seed gave different fault sequences")
	}
}

func TestDroppedConnections(t *testing.T) {
	h := newHarness(t, Options{Faults: Faults{DropRate: 0.5, Seed: 7}})
	client := h.srv.Client()
	errs, applied := 0, 0
	const n = 200
	for i := range n {
		key := fmt.Sprint(i)
		req, _ := http.NewRequest("PUT", valuesURL(h, key), bytes.NewReader([]byte("v")))
		req.Header.Set("Authorization", "Bearer t")
		resp, err := client.Do(req)
		if err != nil {
			errs++
			if _, ok := h.e.Snapshot(testAccount, testNS)[key]; ok {
				applied++
			}
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("undropped request: %d", resp.StatusCode)
		}
	}
	if errs < 70 || errs > 130 {
		t.Errorf("%d of %d requests failed at drop rate 0.5", errs, n)
	}
	if applied == 0 || applied == errs {
		t.Errorf("of %d dropped writes %d took effect; want some before and some after", errs, applied)
	}
	if got := h.e.Count(OpPut, StatusDropped); got != errs {
		t.Errorf("dropped count %d, client errors %d", got, errs)
	}

	h.e.SetFaults(Faults{})
	if r := h.do("PUT", valuesURL(h, "after"), []byte("v")); r.status != 200 {
		t.Errorf("after SetFaults(Faults{}): %d", r.status)
	}
}

func TestLatencyAndSetFaults(t *testing.T) {
	h := newHarness(t, Options{})
	h.e.SetFaults(Faults{Latency: 30 * time.Millisecond, LatencyJitter: 5 * time.Millisecond})
	start := time.Now()
	h.do("GET", valuesURL(h, "k"), nil)
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("request took %v, less than the injected latency", el)
	}
	h.e.SetFaults(Faults{ServerErrorRate: 1})
	if r := h.do("GET", valuesURL(h, "k"), nil); r.status < 500 {
		t.Errorf("with rate 1: %d", r.status)
	}
	h.e.SetFaults(Faults{})
	if r := h.do("GET", valuesURL(h, "k"), nil); r.status != 404 {
		t.Errorf("faults off: %d", r.status)
	}
}
