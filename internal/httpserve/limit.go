package httpserve

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// newConnGrace is how long a connection may stay silent after connecting
// before it counts as idle when a slot is needed. Clients send their request
// as soon as they connect; one still silent after this long is a client the
// server can drop in favour of one that waits, as ReadHeaderTimeout would
// drop it a little later anyway.
const newConnGrace = 2 * time.Second

// limitListener holds at most max connections open. Unlike
// netutil.LimitListener it never leaves a real client waiting behind a
// flood of idle ones: when a connection arrives at the cap, the connection
// that has been idle the longest is closed to make room, and the newcomer
// waits only while every held connection is busy with a request.
//
// A connection is accepted before room is made, so the process holds at most
// max+1 descriptors for the listener's connections; while the newcomer
// waits, further clients queue in the kernel's backlog, holding none.
type limitListener struct {
	net.Listener
	max int
	now func() time.Time

	mu    sync.Mutex
	conns map[*limitedConn]struct{}
	// changed is closed and replaced whenever a connection closes or goes
	// idle, to wake a waiting Accept.
	changed chan struct{}
	evicted int
	// waiting is 1 while Accept holds a connection it has no room for.
	waiting int

	closeOnce sync.Once
	done      chan struct{}
}

func newLimitListener(ln net.Listener, max int, now func() time.Time) *limitListener {
	return &limitListener{
		Listener: ln,
		max:      max,
		now:      now,
		conns:    make(map[*limitedConn]struct{}),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// limitedConn is a connection counted against the cap until it is closed.
type limitedConn struct {
	net.Conn
	l *limitListener
	// state and since (when it entered state) are guarded by l.mu.
	state http.ConnState
	since time.Time
	once  sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.remove(c) })
	return err
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := l.makeRoom(); err != nil {
		c.Close()
		return nil, err
	}
	lc := &limitedConn{Conn: c, l: l, state: http.StateNew, since: l.now()}
	l.mu.Lock()
	l.conns[lc] = struct{}{}
	l.mu.Unlock()
	return lc, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// makeRoom returns once fewer than max connections are held, closing idle
// ones to get there and waiting while all are busy.
func (l *limitListener) makeRoom() error {
	for {
		l.mu.Lock()
		if len(l.conns) < l.max {
			l.mu.Unlock()
			return nil
		}
		victim, wake := l.victimLocked()
		if victim != nil {
			l.evicted++
		}
		changed := l.changed
		l.mu.Unlock()
		if victim != nil {
			// Close removes it from conns; the server's goroutine for it
			// sees the read fail and ends.
			victim.Close()
			continue
		}
		l.mu.Lock()
		l.waiting++
		l.mu.Unlock()
		err := l.wait(changed, wake)
		l.mu.Lock()
		l.waiting--
		l.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// wait blocks until changed is closed, wake passes (0: no timeout) or the
// listener closes.
func (l *limitListener) wait(changed <-chan struct{}, wake time.Duration) error {
	var timeout <-chan time.Time
	if wake > 0 {
		t := time.NewTimer(wake)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-changed:
	case <-timeout:
	case <-l.done:
		return net.ErrClosed
	}
	return nil
}

// victimLocked picks the connection to close: the longest idle keep-alive
// one, else the longest silent new one past newConnGrace. With none, wake
// is how long until a silent one passes its grace (0: none to wait for).
func (l *limitListener) victimLocked() (victim *limitedConn, wake time.Duration) {
	now := l.now()
	var idle, silent *limitedConn
	for c := range l.conns {
		switch c.state {
		case http.StateIdle:
			if idle == nil || c.since.Before(idle.since) {
				idle = c
			}
		case http.StateNew:
			if silent == nil || c.since.Before(silent.since) {
				silent = c
			}
		}
	}
	switch {
	case idle != nil:
		return idle, 0
	case silent == nil:
		return nil, 0
	case now.Sub(silent.since) >= newConnGrace:
		return silent, 0
	}
	return nil, newConnGrace - now.Sub(silent.since)
}

// track is the server's ConnState hook.
func (l *limitListener) track(c net.Conn, s http.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, held := l.conns[lc]; !held {
		return
	}
	lc.state, lc.since = s, l.now()
	if s == http.StateIdle {
		l.wakeLocked()
	}
}

func (l *limitListener) remove(c *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
	l.wakeLocked()
}

func (l *limitListener) wakeLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// listenerStats are a limitListener's counters.
type listenerStats struct {
	// Held is the connections open; Evicted how many were closed to make
	// room; Waiting is 1 while a newcomer waits for a busy one to finish.
	Held, Evicted, Waiting int
}

func (l *limitListener) stats() listenerStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return listenerStats{Held: len(l.conns), Evicted: l.evicted, Waiting: l.waiting}
}
