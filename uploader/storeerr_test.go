package uploader

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/metrics"
)

// TestStateStoreErrorsCounted: a state store that refuses writes or reads
// is counted by operation in kvsync_state_store_errors_total, which the
// alert on the local disk watches; no request goes out unrecorded.
func TestStateStoreErrorsCounted(t *testing.T) {
	tests := []struct {
		name   string
		putErr error
		getErr error
		want   metrics.StoreOp
	}{
		{name: "writes refused", putErr: errors.New("disk full"), want: metrics.StoreIntent},
		{name: "reads refused", getErr: errors.New("i/o error"), want: metrics.StoreRead},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := newFakeKV(t)
			st := newMemStore()
			st.putErr, st.getErr = tc.putErr, tc.getErr
			reg := prometheus.NewRegistry()
			m := metrics.New(reg, "test").Sync("test")
			e, _ := newTestEngine(t, kv, st, func(o *Options) { o.Metrics = m; o.RetryBackoff = 1 << 40 })
			tr := newTree(t)
			rep, err := e.SyncOnce(context.Background(), complete(tr.write("a.txt", "a")))
			if err == nil || rep.Failed != 1 {
				t.Fatalf("%+v, %v; want the key failed", rep, err)
			}
			if got := testutil.ToFloat64(m.StoreErrors.WithLabelValues(string(tc.want))); got < 1 {
				t.Errorf("kvsync_state_store_errors_total{op=%q} = %v, want at least 1", tc.want, got)
			}
			if kv.writes() != 0 {
				t.Errorf("%d writes sent without a record of them", kv.writes())
			}
		})
	}
}
