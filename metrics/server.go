package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvsync/kvsync/internal/httpserve"
)

// DefaultAddr is loopback so that metrics are not exposed beyond the host
// unless an operator asks for it.
const DefaultAddr = "127.0.0.1:9464"

// Limits of the metrics server. A scrape or a probe is one small GET with no
// body, answered in well under a second, by one or two clients at a time, so
// every limit is tight: whoever can reach the port (in the Kubernetes example,
// possibly any pod) cannot hold descriptors the uploader and the watcher need.
const (
	// shutdownTimeout bounds how long Serve waits for in-flight scrapes.
	shutdownTimeout = 5 * time.Second
	// DefaultMaxConns caps the connections held open; idle ones are closed
	// to admit a new scraper once it is reached.
	DefaultMaxConns   = 16
	readHeaderTimeout = 5 * time.Second
	// idleTimeout keeps a scraper's connection across the usual 15-60 s
	// scrape interval; past that a reconnect costs one handshake, while a
	// held idle connection costs a descriptor.
	idleTimeout = 60 * time.Second
	// requestTimeout bounds gathering and writing one response.
	requestTimeout = 30 * time.Second
	maxHeaderBytes = 8 << 10
)

// ServerOptions configure the metrics and health endpoints.
type ServerOptions struct {
	// Addr is the listen address; empty means DefaultAddr.
	Addr string
	// Gatherer supplies /metrics; nil serves an empty registry.
	Gatherer prometheus.Gatherer
	// Ready answers /readyz; nil means always ready.
	Ready func() bool
	// Logger receives scrape and server errors; nil discards.
	Logger *slog.Logger
	// MaxConns caps the connections held open; 0 means DefaultMaxConns. It
	// is lowered further when the file descriptor limit is low.
	MaxConns int
}

func (o ServerOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// NewHandler serves /metrics, /healthz (200 "ok" while the process serves)
// and /readyz (200 when Ready reports true, else 503).
func NewHandler(o ServerOptions) http.Handler {
	g := o.Gatherer
	if g == nil {
		g = prometheus.NewRegistry()
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(o.logger().Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if o.Ready != nil && !o.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Serve listens on o.Addr and serves NewHandler until ctx is done, then shuts
// down gracefully. ready, if not nil, receives the bound address once the
// listener is open (useful with port 0). It returns nil after a shutdown
// caused by ctx, and an error naming the address if listening fails.
func Serve(ctx context.Context, o ServerOptions, ready func(net.Addr)) error {
	addr := o.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	if ready != nil {
		ready(ln.Addr())
	}
	maxConns := o.MaxConns
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	err = httpserve.Serve(ctx, ln, httpserve.Options{
		Handler:           NewHandler(o),
		MaxConns:          maxConns,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		RequestTimeout:    requestTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		MaxBodyBytes:      0, // no endpoint takes a body
		ShutdownGrace:     shutdownTimeout,
		ErrorLog:          slog.NewLogLogger(o.logger().Handler(), slog.LevelWarn),
	})
	if err != nil {
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	}
	return nil
}
