package testkit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/kvsync/kvsync/kvapi"
)

func TestBufferConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				fmt.Fprintf(&b, "%d\n", i)
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if n := strings.Count(b.String(), "\n"); n != 800 {
		t.Fatalf("%d lines, want 800: writes were lost", n)
	}
}

func TestKVScript(t *testing.T) {
	errA, errB, errAfter := errors.New("a"), errors.New("b"), errors.New("after")
	cases := []struct {
		name string
		kv   *KV
		want []error // per call, each op of kvapi.Ops in turn
	}{
		{name: "zero value succeeds", kv: &KV{}, want: []error{nil, nil, nil}},
		{name: "script then success", kv: &KV{Script: []error{errA, nil, errB}}, want: []error{errA, nil, errB, nil}},
		{name: "script then Err", kv: &KV{Script: []error{errA}, Err: errAfter}, want: []error{errA, errAfter, errAfter}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ops []kvapi.Op
			for i, want := range tc.want {
				op := kvapi.Ops[i%len(kvapi.Ops)]
				ops = append(ops, op)
				if err := Call(context.Background(), tc.kv, op); err != want {
					t.Errorf("call %d (%s) = %v, want %v", i, op, err, want)
				}
			}
			if got := tc.kv.Calls(); got != len(tc.want) {
				t.Errorf("Calls() = %d, want %d", got, len(tc.want))
			}
			if got := tc.kv.Ops(); fmt.Sprint(got) != fmt.Sprint(ops) {
				t.Errorf("Ops() = %v, want %v", got, ops)
			}
			if got := len(tc.kv.Times()); got != len(tc.want) {
				t.Errorf("%d times recorded, want %d", got, len(tc.want))
			}
		})
	}
}

func TestKVPutReadsTheValueOnEveryCall(t *testing.T) {
	kv := &KV{Script: []error{errors.New("retry me")}}
	for range 2 {
		Call(context.Background(), kv, kvapi.OpPut)
	}
	if got := kv.Bodies(); fmt.Sprint(got) != "[payload payload]" {
		t.Fatalf("Bodies() = %q, want the whole value twice", got)
	}
}

func TestKVListAllFollowsPages(t *testing.T) {
	cases := []struct {
		name  string
		pages []kvapi.KeyPage
		want  string
		calls int
	}{
		{name: "no pages", want: "", calls: 1},
		{name: "one page", pages: []kvapi.KeyPage{{Keys: []kvapi.KeyInfo{{Name: "a"}}}}, want: "a", calls: 1},
		{name: "an empty page between", pages: []kvapi.KeyPage{{Keys: []kvapi.KeyInfo{{Name: "a"}}}, {}, {Keys: []kvapi.KeyInfo{{Name: "b"}, {Name: "c"}}}}, want: "a,b,c", calls: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kv := &KV{Pages: tc.pages}
			var keys []string
			err := kvapi.ListAll(context.Background(), kv, "ns", "", func(k kvapi.KeyInfo) error {
				keys = append(keys, k.Name)
				return nil
			})
			if err != nil || strings.Join(keys, ",") != tc.want {
				t.Fatalf("ListAll = %v, %v; want %s", keys, err, tc.want)
			}
			if kv.Calls() != tc.calls {
				t.Errorf("%d list calls, want %d", kv.Calls(), tc.calls)
			}
		})
	}
}

func TestKVBulkResultCountsEveryKey(t *testing.T) {
	kv := &KV{}
	if r, err := kv.BulkPut(context.Background(), "ns", make([]kvapi.BulkPair, 3)); err != nil || r.SuccessfulKeyCount != 3 {
		t.Errorf("BulkPut = %+v, %v; want 3 successful", r, err)
	}
	if r, err := kv.BulkDelete(context.Background(), "ns", []string{"a", "b"}); err != nil || r.SuccessfulKeyCount != 2 {
		t.Errorf("BulkDelete = %+v, %v; want 2 successful", r, err)
	}
}
