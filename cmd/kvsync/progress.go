package main

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/desired"
	"github.com/kvsync/kvsync/metrics"
)

const (
	// progressRedraw is how often the line on a terminal is redrawn.
	progressRedraw = 200 * time.Millisecond
	// progressPlainEvery is how often a run whose stderr is not a terminal
	// (CI, a pipe, a journal) logs where it is: often enough to show a long
	// publish is moving, rarely enough not to bury the log.
	progressPlainEvery = 5 * time.Second
)

// progress tells a person where a sync is: on a terminal, one line the
// console redraws (done of total, percentage, rate, ETA); elsewhere a log
// record every few seconds. It counts from the same counters /metrics
// exports, so it cannot disagree with them. The total is what the scans
// found: each sync's scan adds its files when its pass begins.
type progress struct {
	con   *console
	m     *metrics.Metrics
	log   *slog.Logger
	now   func() time.Time
	start time.Time

	mu sync.Mutex
	// begun is when the first pass began: the rate counts from there, not
	// from the first scan, which sends nothing.
	begun time.Time
	// finished counts the files of the passes that ended; total includes
	// the pass in progress, whose own files are cur.
	finished, total int
	cur             passProgress

	stopOnce sync.Once
	done     chan struct{}
	exited   chan struct{}
}

// passProgress is one sync's pass: its files, those of them the scan
// already held back (the engine reports no metric for those), and the
// counters as they stood when it began.
type passProgress struct {
	files, held int
	base        float64
	// walking: the pass is fed by its scan as it goes (track), so files
	// and the run's total still grow and no share of them can be told.
	walking bool
}

// startProgress starts telling where the sync is, on con when it is a
// terminal, through log otherwise. stop ends it.
func startProgress(con *console, m *metrics.Metrics, log *slog.Logger) *progress {
	return startProgressEvery(con, m, log, time.Now, progressRedraw, progressPlainEvery)
}

func startProgressEvery(con *console, m *metrics.Metrics, log *slog.Logger, now func() time.Time, redraw, plain time.Duration) *progress {
	p := &progress{con: con, m: m, log: log, now: now, start: now(), done: make(chan struct{}), exited: make(chan struct{})}
	every := plain
	if con.tty {
		every = redraw
	}
	go func() {
		defer close(p.exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if con.tty {
					con.setStatus(p.line())
				} else {
					p.logPlain()
				}
			case <-p.done:
				if con.tty {
					con.finishStatus(p.line())
				}
				return
			}
		}
	}()
	return p
}

// begin starts counting a sync's pass over snap, once its scan is done.
// The pass before it, if any, is over: its files count as done whatever
// became of them (written, failed, vanished), as the summary reports.
func (p *progress) begin(snap desired.Snapshot) {
	held := 0
	for _, st := range snap.States {
		if st.Err != nil {
			held++
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.begun.IsZero() {
		p.begun = p.now()
	}
	p.finished += p.cur.files
	p.cur = passProgress{files: len(snap.States), held: held, base: p.settled()}
	p.total += len(snap.States)
}

// settled counts every file whose pass decided its fate: written,
// unchanged, failed, rejected, or held back by the engine (unreadable, or
// not the file the scan saw). Files the scan held back are not among them.
func (p *progress) settled() float64 {
	var n float64
	for _, r := range []metrics.UploadResult{metrics.UploadSuccess, metrics.UploadUnchanged, metrics.UploadFailed, metrics.UploadRejected} {
		n += p.m.Uploaded(r)
	}
	return n + p.m.Skipped(metrics.SkipUnreadable) + p.m.Skipped(metrics.SkipChanged)
}

// track is begin for a streamed scan (desired.Snapshot.Walk): the engine
// syncs while the scan finds the files, so the pass counts them as the
// walk passes them, and the total is final, with a percentage and an ETA,
// only once the walk has ended.
func (p *progress) track(snap desired.Snapshot) desired.Snapshot {
	if snap.Walk == nil {
		p.begin(snap)
		return snap
	}
	p.begin(desired.Snapshot{})
	p.mu.Lock()
	p.cur.walking = true
	p.mu.Unlock()
	walk := snap.Walk
	snap.Walk = func(yield func(desired.State) bool) (bool, string) {
		defer func() {
			p.mu.Lock()
			p.cur.walking = false
			p.mu.Unlock()
		}()
		return walk(func(st desired.State) bool {
			p.mu.Lock()
			p.cur.files++
			p.total++
			if st.Err != nil {
				p.cur.held++
			}
			p.mu.Unlock()
			return yield(st)
		})
	}
	return snap
}

// progressState is where the run is.
type progressState struct {
	scanning     bool // no pass has begun: listing the namespace, scanning the tree
	walking      bool // the current pass's scan is still finding files: total is a floor
	done, total  int
	failed       int
	bytes        int64
	elapsed, ran time.Duration // since start; since the first pass began
}

func (p *progress) state() progressState {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	s := progressState{
		scanning: p.begun.IsZero(),
		walking:  p.cur.walking,
		total:    p.total,
		failed:   int(p.m.Uploaded(metrics.UploadFailed) + p.m.Uploaded(metrics.UploadRejected)),
		bytes:    int64(p.m.UploadedBytes(metrics.UploadSuccess)),
		elapsed:  now.Sub(p.start),
	}
	if !s.scanning {
		s.ran = now.Sub(p.begun)
		cur := p.cur.held + int(p.settled()-p.cur.base)
		s.done = p.finished + min(max(cur, 0), p.cur.files)
	}
	return s
}

// rate is files a second since the first pass began; 0 while unknown.
func (s progressState) rate() float64 {
	if s.ran <= 0 || s.done == 0 {
		return 0
	}
	return float64(s.done) / s.ran.Seconds()
}

// eta is the time left at the rate so far; false while it cannot be told.
func (s progressState) eta() (time.Duration, bool) {
	r := s.rate()
	if r == 0 {
		return 0, false
	}
	left := float64(s.total-s.done) / r
	if left > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return (time.Duration(left * float64(time.Second))).Round(time.Second), true
}

func (s progressState) percent() int {
	if s.total == 0 {
		return 100
	}
	return s.done * 100 / s.total
}

// line is the terminal's status line.
func (p *progress) line() string {
	s := p.state()
	if s.scanning {
		return fmt.Sprintf("kvsync: listing and scanning  %s", s.elapsed.Round(100*time.Millisecond))
	}
	var b strings.Builder
	if s.walking {
		fmt.Fprintf(&b, "kvsync: %d of %d+ files (scanning)  %s", s.done, s.total, config.HumanSize(s.bytes))
	} else {
		fmt.Fprintf(&b, "kvsync: %d of %d files (%d%%)  %s", s.done, s.total, s.percent(), config.HumanSize(s.bytes))
	}
	if s.failed > 0 {
		fmt.Fprintf(&b, "  %d failed", s.failed)
	}
	if r := s.rate(); r > 0 {
		fmt.Fprintf(&b, "  %.0f files/s", r)
	}
	if eta, ok := s.eta(); ok && s.done < s.total && !s.walking {
		fmt.Fprintf(&b, "  ETA %s", eta)
	}
	fmt.Fprintf(&b, "  %s", s.elapsed.Round(100*time.Millisecond))
	return b.String()
}

// logPlain is the line every few seconds where there is no terminal: a log
// record, so a JSON log stays JSON.
func (p *progress) logPlain() {
	s := p.state()
	if s.scanning {
		p.log.Info("sync progress: listing and scanning", "elapsed", s.elapsed.Round(time.Second))
		return
	}
	attrs := []any{"done", s.done, "total", s.total}
	if s.walking {
		attrs = append(attrs, "scanning", true)
	} else {
		attrs = append(attrs, "percent", s.percent())
	}
	attrs = append(attrs, "bytes", s.bytes, "failed", s.failed, "files_per_second", math.Round(s.rate()))
	if eta, ok := s.eta(); ok && !s.walking {
		attrs = append(attrs, "eta", eta)
	}
	p.log.Info("sync progress", attrs...)
}

// stop draws the last state on a terminal, leaving it as an ordinary
// line, and ends the progress.
func (p *progress) stop() {
	p.stopOnce.Do(func() { close(p.done) })
	<-p.exited
}
