package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

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
			ok := m.Uploaded(metrics.UploadSuccess)
			failed := m.Uploaded(metrics.UploadFailed)
			same := m.Uploaded(metrics.UploadUnchanged)
			bytes := m.UploadedBytes(metrics.UploadSuccess)
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
