package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliResult is one finished kvsync invocation.
type cliResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r cliResult) String() string {
	return "exit " + strconv.Itoa(r.code) + "\n--- stdout\n" + tail(r.stdout, 30) + "\n--- stderr\n" + tail(r.stderr, 30)
}

// cliOpts adjust how kvsync is started.
type cliOpts struct {
	// timeout kills a run that hangs; the test then fails.
	timeout time.Duration
	// env replaces the default environment additions (the test token).
	env []string
	// cred runs kvsync as another user (tests run as root, which bypasses
	// permission bits).
	cred *syscall.Credential
}

// runCLI runs kvsync to completion and returns its outputs and exit code.
func runCLI(t *testing.T, o cliOpts, args ...string) cliResult {
	t.Helper()
	if o.timeout == 0 {
		o.timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, kvsyncBin, args...)
	if o.env == nil {
		o.env = []string{"CLOUDFLARE_API_TOKEN=" + testToken}
	}
	cmd.Env = append(os.Environ(), o.env...)
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("kvsync %s did not finish within %s\n%s", strings.Join(args, " "), o.timeout, res)
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("kvsync %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// execKvsync is a kvsync command with the test token, not yet started.
func execKvsync(env *kvEnv, args ...string) *exec.Cmd {
	cmd := exec.Command(kvsyncBin, args...)
	cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN="+testToken)
	return cmd
}
