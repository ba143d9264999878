package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/emulator"
)

func TestDisplay(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"site/index.html", "site/index.html"},
		{"with space", "with space"},
		{"ünïcödé/日本語😀", "ünïcödé/日本語😀"},
		{"", ""},
		{"evil\nwrite  FAKE", `"evil\nwrite  FAKE"`},
		{"red\x1b[31m", `"red\x1b[31m"`},
		{"cr\rhere", `"cr\rhere"`},
		{"tab\there", `"tab\there"`},
		{"bidi\u202etxt.exe", `"bidi\u202etxt.exe"`},
		{"bad\xffutf8", `"bad\xffutf8"`},
		{"del\x7f", `"del\x7f"`},
		{"nbsp\u00a0", `"nbsp\u00a0"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := display(tc.in); got != tc.want {
				t.Errorf("display(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestDisplayErr(t *testing.T) {
	evil := fmt.Errorf("reading %s: denied", "x\nwrite  FAKE")
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"plain", errors.New("no such file"), "no such file"},
		{"a name with a newline", evil, `"reading x\nwrite  FAKE: denied"`},
		{"joined errors keep their lines", errors.Join(errors.New("first"), evil), "first\n" + `"reading x\nwrite  FAKE: denied"`},
		{"a wrapped join keeps its lines", fmt.Errorf("sync: %w", errors.Join(errors.New("a"), evil)), "sync: a\n" + `"reading x\nwrite  FAKE: denied"`},
		{"a join inside a message", fmt.Errorf("x %w y", errors.Join(errors.New("a"), errors.New("b"))), "x a\nb y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := displayErr(tc.err); got != tc.want {
				t.Errorf("displayErr = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestOutputQuotesHostileNames: a file named to forge a line of output and
// carry a terminal escape sequence is still published verbatim, but what
// plan, sync and check print for a person shows it quoted: no forged line,
// no raw control byte. Logs in text and JSON escape it themselves.
func TestOutputQuotesHostileNames(t *testing.T) {
	const evil = "evil\nwrite  FAKE-LINE\x1b[31m"
	env := newKVEnv(t, emulator.Faults{})
	mustWrite(t, filepath.Join(env.root, evil), "v")
	mustWrite(t, filepath.Join(env.root, "held\nback  FAKE\x1b[2J"), "w")
	mustWrite(t, filepath.Join(env.root, "held\nback  FAKE\x1b[2J.meta.json"), "{not json")
	env.writeConfig("", "")

	check := func(t *testing.T, what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\r") {
			t.Errorf("%s prints a raw control character:\n%q", what, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "write  FAKE") || strings.HasPrefix(line, "back  FAKE") {
				t.Errorf("%s prints a forged line %q:\n%s", what, line, out)
			}
		}
	}
	plan := runCLI(t, cliOpts{}, "plan", "--config", env.config)
	check(t, "plan", plan.stdout+plan.stderr)
	if !strings.Contains(plan.stdout, `write  "evil\nwrite  FAKE-LINE\x1b[31m"`) {
		t.Errorf("plan does not show the name quoted:\n%s", plan)
	}
	for _, format := range []string{"text", "json"} {
		res := runCLI(t, cliOpts{}, "sync", "--config", env.config, "--log-format", format)
		if res.code != exitSyncFailed {
			t.Fatalf("sync (%s logs): want exit %d for the held-back file\n%s", format, exitSyncFailed, res)
		}
		check(t, "sync with "+format+" logs", res.stdout+res.stderr)
		if !strings.Contains(res.stdout, `held back: "held\nback  FAKE\x1b[2J"`) {
			t.Errorf("sync does not show the held-back name quoted:\n%s", res)
		}
	}
	res := runCLI(t, cliOpts{}, "check", "--config", env.config)
	check(t, "check", res.stdout+res.stderr)

	// Quoting is for people only: the key itself is the name, byte for byte.
	got := env.em.Snapshot(testAccount, testNamespace)
	if e, ok := got[evil]; !ok || string(e.Value) != "v" || len(got) != 1 {
		t.Errorf("want only key %q holding \"v\" in KV, got %d keys", evil, len(got))
	}
}
