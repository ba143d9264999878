// Package httpserve is the one place that turns a handler and a listener
// into an HTTP server fit to face untrusted peers: the metrics endpoints and
// the Workers KV emulator both serve through it.
//
// What it guards against, and how:
//   - a flood of idle or silent connections exhausting file descriptors: the
//     listener holds at most MaxConns connections (fewer when the process's
//     descriptor limit is low) and, when full, closes the longest idle one
//     to admit a waiting client instead of blocking accept (see limitListener);
//   - slow or oversized requests: header read, per-request and idle
//     deadlines, a header size limit and a body size limit.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Defaults for the zero fields of Options.
const (
	DefaultMaxConns          = 64
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultRequestTimeout    = 30 * time.Second
	DefaultMaxHeaderBytes    = 8 << 10
	DefaultShutdownGrace     = 5 * time.Second
)

// Options configure Serve. Zero fields take the defaults above, except
// MaxBodyBytes, whose zero means that no request may carry a body.
type Options struct {
	Handler http.Handler
	// MaxConns caps the connections held open at once. It is lowered to an
	// eighth of the process's file descriptor limit (at least 4), so two
	// servers in one process leave most descriptors to the rest of it.
	MaxConns int
	// ReadHeaderTimeout bounds reading a request's headers, including the
	// wait for the first byte of a new connection.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that carries no request.
	IdleTimeout time.Duration
	// RequestTimeout is the read and write deadline of one request, counted
	// from the moment its handler starts; a handler may re-arm it with
	// ExtendDeadline (the emulator does after its injected latency).
	RequestTimeout time.Duration
	// MaxHeaderBytes bounds the request line and headers.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request body; 0 refuses any body.
	MaxBodyBytes int64
	// RejectBody answers a request whose body is over MaxBodyBytes;
	// default a plain-text 413. It lets the emulator answer in
	// Cloudflare's envelope.
	RejectBody func(w http.ResponseWriter, r *http.Request, limit int64)
	// ShutdownGrace bounds how long in-flight requests may finish once the
	// context of Serve ends.
	ShutdownGrace time.Duration
	// ErrorLog receives the server's own errors; nil uses the log package.
	ErrorLog *log.Logger
	// FDLimit reports the process's file descriptor limit (0 if unknown);
	// nil reads RLIMIT_NOFILE. Tests inject a low one.
	FDLimit func() int
}

func (o Options) withDefaults() Options {
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxBodyBytes < 0 {
		o.MaxBodyBytes = 0
	}
	if o.RejectBody == nil {
		o.RejectBody = func(w http.ResponseWriter, _ *http.Request, limit int64) {
			http.Error(w, "request body too large: the limit is "+strconv.FormatInt(limit, 10)+" bytes", http.StatusRequestEntityTooLarge)
		}
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = DefaultShutdownGrace
	}
	if o.FDLimit == nil {
		o.FDLimit = fdLimit
	}
	return o
}

// EffectiveMaxConns is the connection cap Serve applies for o: MaxConns,
// lowered to an eighth of the descriptor limit, and never below 4.
func EffectiveMaxConns(o Options) int {
	o = o.withDefaults()
	n := o.MaxConns
	if lim := o.FDLimit(); lim > 0 {
		n = min(n, max(lim/8, 4))
	}
	return n
}

// newServer builds the server and the guarded listener around ln; now is
// the clock connection ages are measured with.
func newServer(ln net.Listener, o Options, now func() time.Time) (*http.Server, *limitListener) {
	o = o.withDefaults()
	ll := newLimitListener(ln, EffectiveMaxConns(o), now)
	srv := &http.Server{
		Handler:           &guard{next: o.Handler, o: o},
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		// ReadTimeout and WriteTimeout stay zero on purpose: they run from
		// the connection's first header byte, so they would count the
		// emulator's injected latency against a 25 MiB value or a 100 MB
		// bulk body, and no one value fits both a metrics scrape and such
		// a transfer. guard sets the same deadlines per request instead,
		// from the moment the handler starts, and a handler may re-arm them.
		IdleTimeout:    o.IdleTimeout,
		MaxHeaderBytes: o.MaxHeaderBytes,
		ConnState:      ll.track,
		ErrorLog:       o.ErrorLog,
	}
	return srv, ll
}

// Serve serves o.Handler on ln until ctx is done, then shuts down: in-flight
// requests get o.ShutdownGrace to finish, after which the rest are cut. It
// returns nil after a shutdown caused by ctx. Serve closes ln.
func Serve(ctx context.Context, ln net.Listener, o Options) error {
	o = o.withDefaults()
	srv, ll := newServer(ln, o, time.Now)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ll) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-errc
		return &ShutdownError{Grace: o.ShutdownGrace, Err: err}
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// ShutdownError reports in-flight requests that outlived the shutdown grace
// and were cut.
type ShutdownError struct {
	Grace time.Duration
	Err   error
}

func (e *ShutdownError) Error() string {
	return fmt.Sprintf("requests still in flight after %s were cut: %v", e.Grace, e.Err)
}

func (e *ShutdownError) Unwrap() error { return e.Err }

// ExtendDeadline moves the read and write deadlines of the request behind w
// to d from now. It does nothing when w cannot reach a connection
// (httptest.ResponseRecorder, HTTP/2 without support).
func ExtendDeadline(w http.ResponseWriter, d time.Duration) {
	rc := http.NewResponseController(w)
	t := time.Now().Add(d)
	_ = rc.SetReadDeadline(t)
	_ = rc.SetWriteDeadline(t)
}

// guard applies the per-request body limit and deadlines.
type guard struct {
	next http.Handler
	o    Options
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limit := g.o.MaxBodyBytes
	// ContentLength is -1 for a body of unknown length (chunked): with no
	// body allowed, that is refused too; otherwise MaxBytesReader stops it.
	if r.ContentLength > limit || (limit == 0 && r.ContentLength < 0) {
		// Closing the connection spares reading a body no one will use.
		w.Header().Set("Connection", "close")
		g.o.RejectBody(w, r, limit)
		return
	}
	if limit > 0 {
		r.Body = http.MaxBytesReader(w, r.Body, limit)
	}
	ExtendDeadline(w, g.o.RequestTimeout)
	g.next.ServeHTTP(w, r)
}
