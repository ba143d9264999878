package main

import (
	"strings"
	"testing"
)

// TestHelpAndVersion: help asked for goes to stdout with exit 0, as Go CLI
// users expect (`| less` works); a mistake goes to stderr with exit 2, said
// once, with a pointer to the help.
func TestHelpAndVersion(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string // substring expected on stdout; "" for none
		stderr     string // substring expected on stderr; "" for none
		stderrOnce bool   // stderr's text must appear exactly once
	}{
		{args: []string{"-h"}, stdout: "Commands:"},
		{args: []string{"--help"}, stdout: "Commands:"},
		{args: []string{"help"}, stdout: "Commands:"},
		{args: []string{"help", "sync"}, stdout: "Usage: kvsync sync [flags]"},
		{args: []string{"sync", "-h"}, stdout: "-dry-run"},
		{args: []string{"check", "--help"}, stdout: "Usage: kvsync check [flags]"},
		{args: []string{"--version"}, stdout: "kvsync " + version},
		{args: []string{"-version"}, stdout: "kvsync " + version},
		{args: []string{"version"}, stdout: "kvsync " + version},
		{args: []string{"version", "--json"}, code: exitUsage, stderr: "flag provided but not defined: -json", stderrOnce: true},
		{args: []string{"sync", "--bogus"}, code: exitUsage, stderr: "Run 'kvsync sync -h' for its flags.", stderrOnce: true},
		{args: []string{"help", "nosuch"}, code: exitUsage, stderr: `unknown command "nosuch"`},
		{args: nil, code: exitUsage, stderr: "Commands:"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			res := runCLI(t, cliOpts{}, tc.args...)
			if res.code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", res.code, tc.code, res)
			}
			if tc.stdout != "" && !strings.Contains(res.stdout, tc.stdout) {
				t.Errorf("stdout lacks %q\n%s", tc.stdout, res)
			}
			if tc.stdout != "" && res.stderr != "" {
				t.Errorf("help or version asked for, yet stderr says something\n%s", res)
			}
			if tc.stderr != "" && !strings.Contains(res.stderr, tc.stderr) {
				t.Errorf("stderr lacks %q\n%s", tc.stderr, res)
			}
			if tc.stderrOnce && strings.Count(res.stderr, tc.stderr) != 1 {
				t.Errorf("stderr says %q %d times\n%s", tc.stderr, strings.Count(res.stderr, tc.stderr), res)
			}
			if tc.code != exitOK && res.stdout != "" {
				t.Errorf("a mistake printed to stdout\n%s", res)
			}
		})
	}
}

// TestHelpListsOnlyUsedFlags: each command's -h lists the flags it acts on
// and no other, and refuses the others like any unknown flag.
func TestHelpListsOnlyUsedFlags(t *testing.T) {
	common := []string{"-config", "-dir", "-account-id", "-namespace-id", "-prefix", "-api-base-url", "-state-dir", "-log-level", "-log-format"}
	for _, tc := range []struct {
		cmd        string
		has, lacks []string
	}{
		{"run", []string{"-concurrency", "-metrics-listen", "-local", "-local-listen", "-drain-timeout"}, []string{"-trust-state", "-dry-run"}},
		{"sync", []string{"-concurrency", "-metrics-listen", "-local", "-local-listen", "-trust-state", "-dry-run"}, []string{"-drain-timeout"}},
		{"plan", []string{"-local", "-local-listen", "-trust-state"}, []string{"-drain-timeout", "-metrics-listen", "-concurrency", "-dry-run"}},
		{"check", nil, []string{"-drain-timeout", "-local", "-local-listen", "-metrics-listen", "-concurrency", "-trust-state", "-dry-run"}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			res := runCLI(t, cliOpts{}, "help", tc.cmd)
			if res.code != exitOK {
				t.Fatalf("help %s: exit %d\n%s", tc.cmd, res.code, res)
			}
			for _, f := range append(common, tc.has...) {
				if !strings.Contains(res.stdout, "  "+f+" ") && !strings.Contains(res.stdout, "  "+f+"\n") {
					t.Errorf("%s -h does not list %s\n%s", tc.cmd, f, res.stdout)
				}
			}
			for _, f := range tc.lacks {
				if strings.Contains(res.stdout, "  "+f+" ") || strings.Contains(res.stdout, "  "+f+"\n") {
					t.Errorf("%s -h lists %s, which it does not use\n%s", tc.cmd, f, res.stdout)
				}
				bad := runCLI(t, cliOpts{}, tc.cmd, "-"+f)
				if bad.code != exitUsage || !strings.Contains(bad.stderr, "flag provided but not defined") {
					t.Errorf("%s %s: want exit 2 for a flag it does not take\n%s", tc.cmd, f, bad)
				}
			}
		})
	}
}

// TestConcurrencyZeroRefused: --concurrency 0 is refused like
// concurrency: 0 in the config, naming the flag, with exit 2.
func TestConcurrencyZeroRefused(t *testing.T) {
	for _, cmd := range []string{"run", "sync"} {
		res := runCLI(t, cliOpts{}, cmd, "--concurrency", "0", "--dir", t.TempDir(), "--namespace-id", "ns", "--state-dir", t.TempDir())
		if res.code != exitUsage || !strings.Contains(res.stderr, "--concurrency") || !strings.Contains(res.stderr, "outside 1..64") {
			t.Errorf("%s --concurrency 0: want exit 2 naming --concurrency\n%s", cmd, res)
		}
	}
}
