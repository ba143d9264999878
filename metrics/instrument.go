package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/kvsync/kvsync/kvapi"
)

// maxCFCode bounds the cf_code label: Cloudflare's codes are small integers
// (1000s for the platform, 10000s for KV), so anything outside 0..99999 is a
// malformed reply and must not mint a new label value.
const maxCFCode = 99999

// Instrument wraps next so that every request it sends is counted in
// APIRequests{op,code} and RequestDuration{op}, and every Cloudflare error
// code of a failed reply in APIErrors{op,cf_code}. code is the HTTP status
// (200 on success) or "error" when no reply came. A request refused by local
// validation never reached the API and is not counted. Placed under the
// retry and rate-limit decorators, it counts every attempt. now defaults to
// time.Now; a nil m returns next unchanged.
func Instrument(next kvapi.KV, m *Metrics, now func() time.Time) kvapi.KV {
	if m == nil {
		return next
	}
	if now == nil {
		now = time.Now
	}
	return &instrumented{next: next, m: m, now: now}
}

type instrumented struct {
	next kvapi.KV
	m    *Metrics
	now  func() time.Time
}

var _ kvapi.KV = (*instrumented)(nil)

// observe records one finished request that started at start.
func (in *instrumented) observe(op kvapi.Op, start time.Time, err error) {
	var ve *kvapi.ValidationError
	if errors.As(err, &ve) {
		return
	}
	o := string(op)
	in.m.RequestDuration.WithLabelValues(o).Observe(in.now().Sub(start).Seconds())
	in.m.APIRequests.WithLabelValues(o, statusLabel(err)).Inc()
	var ae *kvapi.APIError
	if errors.As(err, &ae) {
		for _, c := range ae.Codes() {
			in.m.APIErrors.WithLabelValues(o, codeLabel(c)).Inc()
		}
	}
}

func statusLabel(err error) string {
	if err == nil {
		return "200"
	}
	if sc := kvapi.StatusCode(err); sc >= 100 && sc <= 999 {
		return strconv.Itoa(sc)
	}
	return "error"
}

func codeLabel(c int) string {
	if c < 0 || c > maxCFCode {
		return "other"
	}
	return strconv.Itoa(c)
}

func (in *instrumented) PutValue(ctx context.Context, ns, key string, v kvapi.Value, opts kvapi.PutOptions) error {
	start := in.now()
	err := in.next.PutValue(ctx, ns, key, v, opts)
	in.observe(kvapi.OpPut, start, err)
	return err
}

func (in *instrumented) BulkPut(ctx context.Context, ns string, pairs []kvapi.BulkPair) (kvapi.BulkResult, error) {
	start := in.now()
	r, err := in.next.BulkPut(ctx, ns, pairs)
	in.observe(kvapi.OpBulkPut, start, err)
	return r, err
}

func (in *instrumented) DeleteValue(ctx context.Context, ns, key string) error {
	start := in.now()
	err := in.next.DeleteValue(ctx, ns, key)
	in.observe(kvapi.OpDelete, start, err)
	return err
}

func (in *instrumented) BulkDelete(ctx context.Context, ns string, keys []string) (kvapi.BulkResult, error) {
	start := in.now()
	r, err := in.next.BulkDelete(ctx, ns, keys)
	in.observe(kvapi.OpBulkDelete, start, err)
	return r, err
}

func (in *instrumented) ListKeys(ctx context.Context, ns string, opts kvapi.ListOptions) (kvapi.KeyPage, error) {
	start := in.now()
	p, err := in.next.ListKeys(ctx, ns, opts)
	in.observe(kvapi.OpList, start, err)
	return p, err
}

func (in *instrumented) GetValue(ctx context.Context, ns, key string) (kvapi.ValueInfo, error) {
	start := in.now()
	v, err := in.next.GetValue(ctx, ns, key)
	in.observe(kvapi.OpGet, start, err)
	return v, err
}

func (in *instrumented) GetMetadata(ctx context.Context, ns, key string) (json.RawMessage, error) {
	start := in.now()
	md, err := in.next.GetMetadata(ctx, ns, key)
	in.observe(kvapi.OpGetMetadata, start, err)
	return md, err
}
