package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/kvapi"
)

// stepClock advances by step on every reading, so each request lasts step.
func stepClock(step time.Duration) func() time.Time {
	t := time.Unix(1_700_000_000, 0)
	return func() time.Time { t = t.Add(step); return t }
}

func TestInstrument(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		code      string // "" when no request may be counted
		cfCodes   map[string]float64
		durations uint64
	}{
		{name: "success", code: "200", durations: 1},
		{name: "rate limited", err: &kvapi.APIError{StatusCode: 429, Errors: []kvapi.ErrorItem{{Code: 971}}, RetryAfter: time.Second},
			code: "429", cfCodes: map[string]float64{"971": 1}, durations: 1},
		{name: "server error with two codes", err: &kvapi.APIError{StatusCode: 500, Errors: []kvapi.ErrorItem{{Code: 10001}, {Code: 10001}, {Code: 10013}}},
			code: "500", cfCodes: map[string]float64{"10001": 2, "10013": 1}, durations: 1},
		{name: "out-of-range codes", err: &kvapi.APIError{StatusCode: 400, Errors: []kvapi.ErrorItem{{Code: 123456789}, {Code: -1}}},
			code: "400", cfCodes: map[string]float64{"other": 2}, durations: 1},
		{name: "wrapped api error", err: fmt.Errorf("ctx: %w", &kvapi.APIError{StatusCode: 404, Errors: []kvapi.ErrorItem{{Code: 10009}}}),
			code: "404", cfCodes: map[string]float64{"10009": 1}, durations: 1},
		{name: "no reply", err: &kvapi.NetworkError{Err: errors.New("connection refused")}, code: "error", durations: 1},
		{name: "validation is not a request", err: &kvapi.ValidationError{Field: "key", Err: kvapi.ErrKeyEmpty}},
	}
	for _, tc := range cases {
		for _, op := range kvapi.Ops {
			t.Run(tc.name+"/"+string(op), func(t *testing.T) {
				reg := prometheus.NewRegistry()
				m := New(reg, "test")
				fake := &testkit.KV{Err: tc.err}
				kv := Instrument(fake, m, stepClock(250*time.Millisecond))
				if err := testkit.Call(context.Background(), kv, op); err != tc.err {
					t.Fatalf("error changed: %v, want %v", err, tc.err)
				}
				if fake.Calls() != 1 {
					t.Fatalf("%d calls reached the KV underneath, want 1", fake.Calls())
				}
				o := string(op)
				total := 0.0
				if tc.code != "" {
					if got := testutil.ToFloat64(m.APIRequests.WithLabelValues(o, tc.code)); got != 1 {
						t.Errorf("APIRequests{%s,%s} = %v, want 1", o, tc.code, got)
					}
				}
				for _, mf := range gather(t, reg) {
					switch mf.GetName() {
					case "kvsync_api_requests_total":
						for _, mt := range mf.GetMetric() {
							total += mt.GetCounter().GetValue()
						}
					case "kvsync_api_request_duration_seconds":
						for _, mt := range mf.GetMetric() {
							h := mt.GetHistogram()
							if mt.GetLabel()[0].GetValue() != o {
								if h.GetSampleCount() != 0 {
									t.Errorf("duration observed under op %s", mt.GetLabel()[0].GetValue())
								}
								continue
							}
							if h.GetSampleCount() != tc.durations {
								t.Errorf("duration samples = %d, want %d", h.GetSampleCount(), tc.durations)
							}
							if tc.durations == 1 && h.GetSampleSum() != 0.25 {
								t.Errorf("duration sum = %v, want 0.25", h.GetSampleSum())
							}
						}
					case "kvsync_api_errors_total":
						for _, mt := range mf.GetMetric() {
							var lop, code string
							for _, l := range mt.GetLabel() {
								switch l.GetName() {
								case "op":
									lop = l.GetValue()
								case "cf_code":
									code = l.GetValue()
								}
							}
							if lop != o || tc.cfCodes[code] != mt.GetCounter().GetValue() {
								t.Errorf("APIErrors{%s,%s} = %v, want %v", lop, code, mt.GetCounter().GetValue(), tc.cfCodes[code])
							}
						}
					}
				}
				if want := map[bool]float64{true: 1, false: 0}[tc.code != ""]; total != want {
					t.Errorf("requests counted = %v, want %v", total, want)
				}
				if got := testutil.CollectAndCount(m.APIErrors); got != len(tc.cfCodes) {
					t.Errorf("APIErrors series = %d, want %d", got, len(tc.cfCodes))
				}
			})
		}
	}
}

func TestInstrumentNilMetrics(t *testing.T) {
	inner := &testkit.KV{}
	if kv := Instrument(inner, nil, nil); kv != kvapi.KV(inner) {
		t.Error("Instrument with nil metrics should return next unchanged")
	}
}

func gather(t *testing.T, g prometheus.Gatherer) []*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestMetricNamesLint(t *testing.T) {
	reg, all := everySeries(t)
	mfs := gather(t, reg)
	if len(mfs) != all {
		t.Errorf("gathered %d metric families, want all %d registered", len(mfs), all)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, "v9").Sync("site")
	var ready atomic.Bool
	srv := httptest.NewServer(NewHandler(ServerOptions{Gatherer: reg, Ready: ready.Load}))
	defer srv.Close()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := get("/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	if code, _ := get("/nope"); code != http.StatusNotFound {
		t.Errorf("/nope = %d, want 404", code)
	}

	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`kvsync_uploads_total{result="failed",sync="site"} 0`,
		`kvsync_deletes_total{result="kept",sync="site"} 0`,
		`kvsync_api_retries_total{op="put",reason="rate_limited"} 0`,
		`kvsync_api_requests_total{code="200",op="bulk_put"} 0`,
		`kvsync_files_skipped_total{reason="too_large",sync="site"} 0`,
		`kvsync_full_syncs_total{sync="site",trigger="startup"} 0`,
		`kvsync_rate_limit_pauses_total 0`,
		`kvsync_watcher_overflows_total{sync="site"} 0`,
		`kvsync_files_held_back{sync="site"} 0`,
		`kvsync_build_info{goversion="go`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHandlerDefaults(t *testing.T) {
	h := NewHandler(ServerOptions{})
	for _, path := range []string{"/readyz", "/metrics"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			t.Errorf("%s with default options = %d, want 200", path, rec.Code)
		}
	}
}

func TestServe(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, "v9")
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServerOptions{Addr: "127.0.0.1:0", Gatherer: reg}, func(a net.Addr) { addrc <- a })
	}()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("Serve returned early: %v", err)
	}
	resp, err := http.Get("http://" + addr.String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz = %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := http.Get("http://" + addr.String() + "/healthz"); err == nil {
		t.Error("server still answering after shutdown")
	}
}

func TestServeListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = Serve(context.Background(), ServerOptions{Addr: ln.Addr().String()}, nil)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("Serve on a busy port = %v, want an error naming the address", err)
	}
}

// TestLintCatchesBadNames shows the lint test can fail: a counter without
// _total and a gauge named like a counter are reported.
func TestLintCatchesBadNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "kvsync_bad_counter", Help: "x"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "kvsync_files_active_total", Help: "x"})
	reg.MustRegister(c, g)
	problems, err := promlint.NewWithMetricFamilies(gather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) < 2 {
		t.Errorf("promlint found %v, want a problem for each metric", problems)
	}
}
