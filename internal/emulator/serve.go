package emulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// shutdownGrace bounds how long in-flight requests may finish after ctx ends.
const shutdownGrace = 5 * time.Second

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
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("emulator: listen on %s: %w", addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		logger.Warn("emulator: listening on a non-loopback address; anyone who can reach it can read and write the data",
			"addr", ln.Addr().String())
	}
	srv := &http.Server{
		Handler:           e,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	logger.Info("emulator: serving the Workers KV API", "base_url", "http://"+ln.Addr().String()+PathPrefix)
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("emulator: serve on %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("emulator: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("emulator: serve on %s: %w", addr, err)
	}
	return nil
}
