package ratelimit

import (
	"context"
	"encoding/json"

	"github.com/kvsync/kvsync/kvapi"
)

// Limit wraps next so that every request first waits on l: one token per
// request, whatever it carries (each ListKeys page and each bulk request of up
// to kvapi.MaxBulkPairs pairs count as one, as Cloudflare counts them).
func Limit(next kvapi.KV, l *Limiter) kvapi.KV {
	return &limited{next: next, l: l}
}

type limited struct {
	next kvapi.KV
	l    *Limiter
}

var _ kvapi.KV = (*limited)(nil)

func (k *limited) PutValue(ctx context.Context, ns, key string, v kvapi.Value, opts kvapi.PutOptions) error {
	if err := k.l.Wait(ctx); err != nil {
		return err
	}
	return k.next.PutValue(ctx, ns, key, v, opts)
}

func (k *limited) BulkPut(ctx context.Context, ns string, pairs []kvapi.BulkPair) (kvapi.BulkResult, error) {
	if err := k.l.Wait(ctx); err != nil {
		return kvapi.BulkResult{}, err
	}
	return k.next.BulkPut(ctx, ns, pairs)
}

func (k *limited) DeleteValue(ctx context.Context, ns, key string) error {
	if err := k.l.Wait(ctx); err != nil {
		return err
	}
	return k.next.DeleteValue(ctx, ns, key)
}

func (k *limited) BulkDelete(ctx context.Context, ns string, keys []string) (kvapi.BulkResult, error) {
	if err := k.l.Wait(ctx); err != nil {
		return kvapi.BulkResult{}, err
	}
	return k.next.BulkDelete(ctx, ns, keys)
}

func (k *limited) ListKeys(ctx context.Context, ns string, opts kvapi.ListOptions) (kvapi.KeyPage, error) {
	if err := k.l.Wait(ctx); err != nil {
		return kvapi.KeyPage{}, err
	}
	return k.next.ListKeys(ctx, ns, opts)
}

func (k *limited) GetValue(ctx context.Context, ns, key string) (kvapi.ValueInfo, error) {
	if err := k.l.Wait(ctx); err != nil {
		return kvapi.ValueInfo{}, err
	}
	return k.next.GetValue(ctx, ns, key)
}

func (k *limited) GetMetadata(ctx context.Context, ns, key string) (json.RawMessage, error) {
	if err := k.l.Wait(ctx); err != nil {
		return nil, err
	}
	return k.next.GetMetadata(ctx, ns, key)
}
