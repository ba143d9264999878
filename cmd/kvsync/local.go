package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
)

// localToken is what --local authenticates with: the embedded emulator
// requires a token like the real API does, so the real auth path runs.
const localToken = "kvsync-local"

// localEmulator is the embedded emulator behind --local.
type localEmulator struct {
	em      *emulator.Emulator
	baseURL string
	dataDir string
	cancel  context.CancelFunc
	done    chan error
}

func startLocalEmulator(ctx context.Context, dataDir, listen string, logger *slog.Logger) (*localEmulator, error) {
	em, err := emulator.New(emulator.Options{DataDir: dataDir, Token: localToken, Logger: logger.With("component", "emulator")})
	if err != nil {
		return nil, fmt.Errorf("local emulator: %w", err)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &localEmulator{em: em, dataDir: dataDir, cancel: cancel, done: make(chan error, 1)}
	addr := make(chan net.Addr, 1)
	go func() {
		l.done <- emulator.ListenAndServe(sctx, listen, em, logger.With("component", "emulator"), func(a net.Addr) { addr <- a })
	}()
	select {
	case a := <-addr:
		l.baseURL = fmt.Sprintf("http://%s/client/v4", a)
		logger.Info("local KV emulator serving", "api_base_url", l.baseURL, "data", dataDir)
		return l, nil
	case err := <-l.done:
		cancel()
		em.Close()
		if err == nil {
			err = errors.New("stopped before listening")
		}
		return nil, fmt.Errorf("local emulator on %s: %w", listen, err)
	case <-time.After(10 * time.Second):
		cancel()
		em.Close()
		return nil, fmt.Errorf("local emulator on %s: not listening after 10s", listen)
	}
}

func (l *localEmulator) stop() {
	l.cancel()
	<-l.done
	l.em.Close()
}
