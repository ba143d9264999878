package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is loopback so that metrics are not exposed beyond the host
// unless an operator asks for it.
const DefaultAddr = "127.0.0.1:9464"

// shutdownTimeout bounds how long Serve waits for in-flight scrapes.
const shutdownTimeout = 5 * time.Second

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
	srv := &http.Server{
		Handler:           NewHandler(o),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(o.logger().Handler(), slog.LevelWarn),
	}
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("metrics: shutdown of %s: %w", ln.Addr(), err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	}
	return nil
}
