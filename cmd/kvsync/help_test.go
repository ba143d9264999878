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
