package kvapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"testing"
)

// discardHandler reads and drops the body, then answers success: the
// cheapest possible server, so the figures are the client's.
func discardHandler(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	writeOK(w, "null")
}

var putSizes = []struct {
	name string
	size int64
}{
	{"1KiB", 1 << 10},
	{"25MiB", MaxValueBytes},
}

// BenchmarkPutValue times the client's streamed PUT: the value is made once,
// before the timer, so generating its bytes is not counted as sending them.
func BenchmarkPutValue(b *testing.B) {
	for _, s := range putSizes {
		b.Run(s.name, func(b *testing.B) {
			c, _ := newTestClient(b, discardHandler)
			content, err := io.ReadAll(io.LimitReader(must(genValue{size: s.size}.Open()), s.size))
			if err != nil {
				b.Fatal(err)
			}
			v := Bytes(content)
			ctx := context.Background()
			b.SetBytes(s.size)
			b.ReportAllocs()
			for b.Loop() {
				if err := c.PutValue(ctx, testNS, "bench/key", v, PutOptions{Metadata: []byte(`{"a":1}`)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBulkPut(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("%dx1KiB", n), func(b *testing.B) {
			c, _ := newTestClient(b, discardHandler)
			pairs := make([]BulkPair, n)
			var total int64
			for i := range pairs {
				v := make([]byte, 1<<10)
				for j := range v {
					v[j] = 'a' + byte((i+j)%26)
				}
				pairs[i] = BulkPair{Key: fmt.Sprintf("bench/%05d", i), Value: v, ExpirationTTL: 3600}
				total += int64(len(v))
			}
			ctx := context.Background()
			b.SetBytes(total)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.BulkPut(ctx, testNS, pairs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPutValueMemoryDoesNotGrowWithSize uploads a generated 25 MiB value
// and checks that the whole process (client and test server) allocated far
// less than the value: the body is streamed, never buffered. It measures
// bytes allocated, not time.
func TestPutValueMemoryDoesNotGrowWithSize(t *testing.T) {
	c, _ := newTestClient(t, discardHandler)
	ctx := context.Background()
	put := func(size int64) uint64 {
		t.Helper()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if err := c.PutValue(ctx, testNS, "mem", genValue{size: size}, PutOptions{ExpirationTTL: 60}); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	put(1 << 10) // open the connection outside the measurement
	small := put(1 << 10)
	large := put(MaxValueBytes)
	t.Logf("allocated %d B for a 1 KiB upload, %d B for a 25 MiB upload", small, large)
	if large > 2<<20 {
		t.Errorf("a 25 MiB upload allocated %d bytes; the body is not streamed", large)
	}
}

func must(r io.ReadCloser, err error) io.ReadCloser {
	if err != nil {
		panic(err)
	}
	return r
}
