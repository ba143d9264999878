package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/metrics"
)

// ttyConsole is a console that believes w is a terminal of cols columns.
func ttyConsole(w *bytes.Buffer, cols int) *console {
	return &console{w: w, tty: true, width: func() int { return cols }}
}

// TestConsole: on a terminal every write clears the status line first and
// draws it again after, in one write; elsewhere writes pass through and
// there is no status line.
func TestConsole(t *testing.T) {
	for _, tc := range []struct {
		name string
		tty  bool
		cols int
		do   func(c *console)
		want string
	}{
		{"record without status", true, 80, func(c *console) {
			c.Write([]byte("time=1 msg=a\n"))
		}, "time=1 msg=a\n"},
		{"record clears and redraws the status", true, 80, func(c *console) {
			c.setStatus("kvsync: 1 of 2 files")
			c.Write([]byte("time=1 msg=a\n"))
		}, clearLine + "kvsync: 1 of 2 files" + clearLine + "time=1 msg=a\nkvsync: 1 of 2 files"},
		{"a redraw replaces the line", true, 80, func(c *console) {
			c.setStatus("one")
			c.setStatus("two")
		}, clearLine + "one" + clearLine + "two"},
		{"an unfinished line is not drawn over", true, 80, func(c *console) {
			c.setStatus("S")
			c.Write([]byte("partial"))
			c.Write([]byte(" more"))
			c.setStatus("T")
		}, clearLine + "S" + clearLine + "partial more\n" + clearLine + "T"},
		{"finish leaves the line and goes below", true, 80, func(c *console) {
			c.setStatus("S")
			c.finishStatus("done")
			c.Write([]byte("after\n"))
		}, clearLine + "S" + clearLine + "done\nafter\n"},
		{"cut to the width less one", true, 10, func(c *console) {
			c.setStatus("kvsync: 1234 of 5678 files")
		}, clearLine + "kvsync: 1"},
		{"not a terminal", false, 80, func(c *console) {
			c.setStatus("S")
			c.Write([]byte("time=1 msg=a\n"))
			c.finishStatus("S")
		}, "time=1 msg=a\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			c := ttyConsole(&b, tc.cols)
			c.tty = tc.tty
			tc.do(c)
			if b.String() != tc.want {
				t.Errorf("wrote %q\nwant  %q", b.String(), tc.want)
			}
		})
	}
}

// TestConsoleNotTerminal: a buffer, a pipe or a file is not a terminal.
func TestConsoleNotTerminal(t *testing.T) {
	if newConsole(&bytes.Buffer{}, func(string) string { return "xterm" }).tty {
		t.Error("a buffer taken for a terminal")
	}
}

// fakeClock is a settable time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func snapshotOf(files, held int) desired.Snapshot {
	s := desired.Snapshot{Complete: true}
	for i := 0; i < files; i++ {
		st := desired.State{Key: "k"}
		if i < held {
			st.Err = errors.New("bad sidecar")
		}
		s.States = append(s.States, st)
	}
	return s
}

// TestProgressLine: done of total, percentage, rate and ETA, from the
// counters /metrics exports, across two syncs' passes.
func TestProgressLine(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	ms := m.Sync("site")
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var b bytes.Buffer
	// Redraws every hour: the test draws by calling line itself.
	p := startProgressEvery(ttyConsole(&b, 200), m, slog.New(slog.DiscardHandler), clk.now, time.Hour, time.Hour)
	defer p.stop()

	clk.add(500 * time.Millisecond)
	if got, want := p.line(), "kvsync: listing and scanning  500ms"; got != want {
		t.Errorf("before a pass: %q, want %q", got, want)
	}
	// A write counted before the pass began (another sync's) is not its.
	ms.Upload(metrics.UploadSuccess, 1)
	p.begin(snapshotOf(10, 1))
	ms.Upload(metrics.UploadSuccess, 2<<10)
	ms.Upload(metrics.UploadSuccess, 1<<10)
	ms.Upload(metrics.UploadUnchanged, 0)
	clk.add(2 * time.Second)
	// 1 held back by the scan + 3 settled = 4 of 10 in 2 s: 2 a second,
	// 6 left: 3 s.
	if got, want := p.line(), "kvsync: 4 of 10 files (40%)  3.0 KiB  2 files/s  ETA 3s  2.5s"; got != want {
		t.Errorf("during the first pass:\n got %q\nwant %q", got, want)
	}
	// An unreadable file the engine held back is settled too.
	ms.Skip(metrics.SkipUnreadable)
	ms.Upload(metrics.UploadFailed, 0)
	clk.add(time.Second)
	if got, want := p.line(), "kvsync: 6 of 10 files (60%)  3.0 KiB  1 failed  2 files/s  ETA 2s  3.5s"; got != want {
		t.Errorf("with a failure:\n got %q\nwant %q", got, want)
	}
	// The next sync's pass: the first one's files are done, whatever
	// became of the rest (vanished files have no counter).
	p.begin(snapshotOf(5, 0))
	for i := 0; i < 5; i++ {
		ms.Upload(metrics.UploadSuccess, 1)
	}
	// More settled than the pass holds (a retry counted twice) is capped.
	ms.Upload(metrics.UploadSuccess, 1)
	clk.add(time.Second + 500*time.Millisecond)
	if got, want := p.line(), "kvsync: 15 of 15 files (100%)  3.0 KiB  1 failed  3 files/s  5s"; got != want {
		t.Errorf("second pass done:\n got %q\nwant %q", got, want)
	}
}

// TestProgressLoggedWhenNotTerminal: without a terminal the progress is a
// log record every few seconds, in the log's own format, and nothing is
// ever drawn.
func TestProgressLoggedWhenNotTerminal(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	ms := m.Sync("site")
	var out testkit.Buffer
	con := newConsole(&out, func(string) string { return "xterm" })
	log := slog.New(slog.NewJSONHandler(con, nil))
	p := startProgressEvery(con, m, log, time.Now, time.Millisecond, 10*time.Millisecond)
	p.begin(snapshotOf(4, 0))
	ms.Upload(metrics.UploadSuccess, 10)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), `"done":1,"total":4,"percent":25`) {
		if time.Now().After(deadline) {
			t.Fatalf("no progress record within 10s:\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.stop()
	if s := out.String(); strings.ContainsAny(s, "\r\033") {
		t.Errorf("terminal control sent to a non-terminal: %q", s)
	}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.HasPrefix(l, "{") || !strings.Contains(l, `"msg":"sync progress`) {
			t.Errorf("not a JSON progress record: %q", l)
		}
	}
}

// TestProgressTracksAStreamedScan: a pass fed by its scan as it walks
// counts the files as they pass; while the walk goes on the total is a
// floor and no percentage or ETA is shown, and once it ends they are.
func TestProgressTracksAStreamedScan(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	ms := m.Sync("site")
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	var b bytes.Buffer
	p := startProgressEvery(ttyConsole(&b, 200), m, slog.New(slog.DiscardHandler), clk.now, time.Hour, time.Hour)
	defer p.stop()

	inner := snapshotOf(4, 1)
	snap := p.track(desired.Snapshot{Walk: func(yield func(desired.State) bool) (bool, string) {
		for i, st := range inner.States {
			if !yield(st) {
				return false, "stopped"
			}
			if i == 2 {
				ms.Upload(metrics.UploadSuccess, 1<<10)
				clk.add(time.Second)
				if got, want := p.line(), "kvsync: 2 of 3+ files (scanning)  1.0 KiB  2 files/s  1s"; got != want {
					t.Errorf("during the walk:\n got %q\nwant %q", got, want)
				}
			}
		}
		return true, ""
	}})
	n := 0
	if complete, _ := snap.Each(func(desired.State) bool { n++; return true }); !complete || n != 4 {
		t.Fatalf("the tracked walk gave %d states (complete %v), want all 4", n, complete)
	}
	clk.add(time.Second)
	if got, want := p.line(), "kvsync: 2 of 4 files (50%)  1.0 KiB  1 files/s  ETA 2s  2s"; got != want {
		t.Errorf("after the walk:\n got %q\nwant %q", got, want)
	}
}
