package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/term"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/metrics"
)

// progress redraws one status line on a terminal while a sync runs. It reads
// the same counters /metrics exports, so it cannot disagree with them.
type progress struct {
	stopOnce sync.Once
	done     chan struct{}
	finished chan struct{}
}

func startProgress(w io.Writer, m *metrics.Metrics) *progress {
	p := &progress{done: make(chan struct{}), finished: make(chan struct{})}
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		close(p.finished)
		return p
	}
	go func() {
		defer close(p.finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		draw := func() {
			ok := counterValue(m.Uploads.WithLabelValues("success"))
			failed := counterValue(m.Uploads.WithLabelValues("failed"))
			same := counterValue(m.Uploads.WithLabelValues("skipped_unchanged"))
			bytes := counterValue(m.UploadBytes.WithLabelValues("success"))
			fmt.Fprintf(f, "\r\033[K%6.0f written  %6.0f unchanged  %4.0f failed  %9s  %5.1fs",
				ok, same, failed, config.HumanSize(int64(bytes)), time.Since(start).Seconds())
		}
		for {
			select {
			case <-t.C:
				draw()
			case <-p.done:
				draw()
				fmt.Fprint(f, "\n")
				return
			}
		}
	}()
	return p
}

func (p *progress) stop() {
	p.stopOnce.Do(func() { close(p.done) })
	<-p.finished
}

func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil || d.Counter == nil {
		return 0
	}
	return d.Counter.GetValue()
}
