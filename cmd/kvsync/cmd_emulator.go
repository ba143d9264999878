package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/kvapi"
)

func cmdEmulator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("emulator", stderr)
	listen := fs.String("listen", "127.0.0.1:8787", "address to serve the API on; keep it on loopback")
	data := fs.String("data", "", "directory to persist keys in (default: memory only)")
	token := fs.String("token", "", "API token to require; visible to every user in ps, prefer --token-file or $"+emulator.TokenEnv+" (default: accept any credentials)")
	tokenFile := fs.String("token-file", "", "file holding the API token to require")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	var f emulator.Faults
	fs.IntVar(&f.Budget, "budget", 0, fmt.Sprintf("requests allowed per --budget-window before every call gets 429 (Cloudflare: %d per %s); 0 = unlimited", kvapi.AccountBudget, kvapi.BudgetWindow))
	fs.DurationVar(&f.BudgetWindow, "budget-window", kvapi.BudgetWindow, "the window of --budget")
	fs.BoolVar(&f.PerKeyWriteLimit, "per-key-limit", false, "answer 429 to a second write of one key within a second, as KV does")
	fs.Float64Var(&f.ServerErrorRate, "error-rate", 0, "fraction of requests answered with a 5xx")
	fs.Float64Var(&f.DropRate, "drop-rate", 0, "fraction of connections dropped without a reply")
	fs.DurationVar(&f.Latency, "latency", 0, "latency added to every request")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return usageError{err}
	}
	tok, err := emulator.ResolveToken(emulator.TokenSources{Flag: *token, File: *tokenFile, Getenv: os.Getenv, Logger: logger})
	if err != nil {
		return usageError{err}
	}
	if tok == "" {
		logger.Warn("emulator: no token configured (--token-file or $" + emulator.TokenEnv + "); any credentials are accepted")
	}
	em, err := emulator.New(emulator.Options{DataDir: *data, Token: tok, Logger: logger, Faults: f})
	if err != nil {
		return err
	}
	defer em.Close()
	return emulator.ListenAndServe(ctx, *listen, em, logger, func(a net.Addr) {
		fmt.Fprintf(stdout, "Workers KV emulator listening; API base URL: http://%s/client/v4\n", a)
	})
}
