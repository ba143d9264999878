package emulator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/kvsync/kvsync/internal/httpserve"
)

// Limits of the emulator's server (ListenAndServe).
const (
	// shutdownGrace bounds how long in-flight requests may finish after ctx ends.
	shutdownGrace = 5 * time.Second
	// MaxConns caps the connections held open (lowered when the descriptor
	// limit is low); at the cap, idle ones are closed to admit new clients.
	MaxConns = 128
	// RequestTimeout is each request's read and write deadline, counted
	// after the injected latency (Faults.Latency). It is generous because a
	// legitimate request may move a 100 MB bulk body or a 25 MiB value; a
	// slow client that holds a connection this long holds one slot of
	// MaxConns, and its body waits for room at the body gate.
	RequestTimeout = 5 * time.Minute
	// idleTimeout outlives the 90 s idle timeout of Go's HTTP clients
	// (kvsync, benchtool), so that they, not the server, end an idle
	// connection and no request races a server-side close. Idle connections
	// beyond that are closed at the cap anyway.
	idleTimeout       = 120 * time.Second
	readHeaderTimeout = 10 * time.Second
	// maxHeaderBytes is far above what Cloudflare clients send (a token,
	// a content type, a user agent).
	maxHeaderBytes = 32 << 10
	// maxBodyBytes is the largest body any route accepts (a bulk body) with
	// room to spare, so the routes' own limits answer first, in the envelope.
	maxBodyBytes = MaxBulkRequestBytes + 1<<20
)

// HealthPath answers 200 "ok" to anyone, with no credentials: it is the one
// endpoint that needs none, for probes and start-up scripts. Like StatsPath
// it is not Cloudflare's, and it is not counted.
const HealthPath = "/__emulator/healthz"

func serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte("ok\n"))
}

// ListenAndServe serves e on addr until ctx is done, then shuts down
// gracefully and returns nil. ready, if not nil, is called with the bound
// address once the listener is open (useful with port 0).
//
// The emulator has no TLS and trivial authentication: addr should be a
// loopback address (the kvsync command defaults to 127.0.0.1). A
// non-loopback address is served, but logged as a warning.
func ListenAndServe(ctx context.Context, addr string, e *Emulator, logger *slog.Logger, ready func(net.Addr)) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("emulator: listen on %s: %w", addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		logger.Warn("emulator: listening on a non-loopback address; anyone who can reach it can read and write the data",
			"addr", ln.Addr().String())
	}
	logger.Info("emulator: serving the Workers KV API", "base_url", "http://"+ln.Addr().String()+PathPrefix)
	if ready != nil {
		ready(ln.Addr())
	}
	if err := httpserve.Serve(ctx, ln, serverOptions(e, logger)); err != nil {
		return fmt.Errorf("emulator: serve on %s: %w", ln.Addr(), err)
	}
	return nil
}

// serverOptions are the limits ListenAndServe serves e with.
func serverOptions(e *Emulator, logger *slog.Logger) httpserve.Options {
	return httpserve.Options{
		Handler:           e,
		MaxConns:          MaxConns,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		RequestTimeout:    RequestTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		MaxBodyBytes:      maxBodyBytes,
		RejectBody: func(w http.ResponseWriter, _ *http.Request, limit int64) {
			writeError(w, tooLarge(fmt.Sprintf("request too large: the limit is %d bytes", limit)))
		},
		ShutdownGrace: shutdownGrace,
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}
