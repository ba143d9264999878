package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/term"
)

// newLogger builds the process logger; every package gets it injected.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToLower(level))); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// Terminal control: carriage return, then erase to the end of the line.
const clearLine = "\r\033[K"

// console is stderr as a person sees it, shared by the logger and the
// progress line. On a terminal the status line belongs to it: a write (one
// log record: slog's handlers write each record whole, in one call) is
// sent as "clear the status, the record, the status again" in one write, so
// a record never lands glued to the status line and the status is always
// the last line. Elsewhere writes pass through untouched and there is no
// status line.
type console struct {
	w   io.Writer
	tty bool
	// width is the terminal's columns (0: unknown); a status line longer
	// than that would wrap, and "\r" would then clear only its last row.
	width func() int

	mu     sync.Mutex
	status string // drawn and not yet cleared; "" for none
	// open: the last write did not end its line, so the status must not
	// be drawn over it.
	open bool
}

// newConsole wraps w, a terminal when it is an *os.File on one whose TERM
// can erase a line.
func newConsole(w io.Writer, getenv func(string) string) *console {
	c := &console{w: w, width: func() int { return 0 }}
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) || getenv("TERM") == "dumb" {
		return c
	}
	c.tty = true
	c.width = func() int {
		cols, _, err := term.GetSize(int(f.Fd()))
		if err != nil {
			return 0
		}
		return cols
	}
	return c
}

func (c *console) Write(p []byte) (int, error) {
	if !c.tty {
		return c.w.Write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var b bytes.Buffer
	if c.status != "" {
		b.WriteString(clearLine)
	}
	b.Write(p)
	if len(p) > 0 {
		c.open = p[len(p)-1] != '\n'
	}
	if c.status != "" && !c.open {
		b.WriteString(c.status)
	}
	if c.open {
		// The status comes back with the next redraw, below this line.
		c.status = ""
	}
	if _, err := c.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// setStatus draws s as the status line in place of the last one.
func (c *console) setStatus(s string) {
	if !c.tty {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s = c.fit(s)
	var b strings.Builder
	if c.open {
		b.WriteString("\n")
		c.open = false
	}
	b.WriteString(clearLine)
	b.WriteString(s)
	c.status = s
	io.WriteString(c.w, b.String())
}

// finishStatus draws s a last time and ends its line: it stays on the
// screen as an ordinary line, and writes after it go below.
func (c *console) finishStatus(s string) {
	if !c.tty {
		return
	}
	c.setStatus(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status = ""
	io.WriteString(c.w, "\n")
}

// fit cuts s to the terminal's width less one column: some terminals wrap
// as soon as the last column is written.
func (c *console) fit(s string) string {
	w := c.width() - 1
	if w <= 0 || utf8.RuneCountInString(s) <= w {
		return s
	}
	r := []rune(s)
	return string(r[:w])
}
