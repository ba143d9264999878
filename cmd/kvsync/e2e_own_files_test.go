package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/emulator"
)

// TestOwnFilesRefusedEndToEnd: the binary refuses, with exit status 2 and a
// message naming both paths and the field, a state directory, token file or
// config file inside the synced tree, from a config file, from flags alone
// and with --local, in check and in sync, before it talks to the API or
// creates the state directory.
func TestOwnFilesRefusedEndToEnd(t *testing.T) {
	noToken := cliOpts{env: []string{"CLOUDFLARE_API_TOKEN="}}

	t.Run("config file", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "index.html"), "index")
		tokenFile := filepath.Join(env.root, "cf-token")
		if err := os.WriteFile(tokenFile, []byte(testToken), 0o600); err != nil {
			t.Fatal(err)
		}
		env.stateDir = filepath.Join(env.root, "state")
		env.writeConfig("token_file: "+tokenFile, "")
		for _, cmd := range []string{"check", "sync"} {
			res := runCLI(t, noToken, cmd, "--config", env.config)
			if res.code != exitUsage {
				t.Fatalf("kvsync %s: want exit %d\n%s", cmd, exitUsage, res)
			}
			for _, want := range []string{
				"state_dir: " + env.stateDir + " is inside syncs[0].dir " + env.root,
				"api.token_file: " + tokenFile + " is inside syncs[0].dir " + env.root,
				`as key "cf-token"`,
			} {
				if !strings.Contains(res.stderr, want) {
					t.Errorf("kvsync %s: stderr lacks %q\n%s", cmd, want, res)
				}
			}
		}
		assertUntouched(t, env)
	})

	t.Run("the config file itself", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "index.html"), "index")
		env.writeConfig("", "")
		inTree := filepath.Join(env.root, "kvsync.yaml")
		if err := os.Rename(env.config, inTree); err != nil {
			t.Fatal(err)
		}
		res := runCLI(t, cliOpts{}, "sync", "--config", inTree)
		if res.code != exitUsage || !strings.Contains(res.stderr, "syncs[0].dir: "+env.root+" holds the config file "+inTree) {
			t.Fatalf("want exit %d naming the dir and the config file\n%s", exitUsage, res)
		}
		assertUntouched(t, env)
	})

	t.Run("flags only", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "index.html"), "index")
		env.stateDir = filepath.Join(env.root, "state")
		for _, cmd := range []string{"check", "sync"} {
			res := runCLI(t, cliOpts{}, cmd, "--dir", env.root, "--state-dir", env.stateDir,
				"--namespace-id", testNamespace, "--account-id", testAccount, "--api-base-url", env.srv.URL+"/client/v4")
			want := "--state-dir: state_dir: " + env.stateDir + " is inside syncs[0].dir " + env.root + " (--dir)"
			if res.code != exitUsage || !strings.Contains(res.stderr, want) {
				t.Fatalf("kvsync %s: want exit %d and %q\n%s", cmd, exitUsage, want, res)
			}
		}
		assertUntouched(t, env)
	})

	t.Run("--local", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "index.html"), "index")
		env.stateDir = filepath.Join(env.root, "state")
		res := runCLI(t, noToken, "sync", "--local", "--dir", env.root, "--state-dir", env.stateDir)
		if res.code != exitUsage || !strings.Contains(res.stderr, "state_dir: "+env.stateDir+" is inside") {
			t.Fatalf("want exit %d naming the state directory\n%s", exitUsage, res)
		}
		// The emulator of --local keeps its data in the state directory: no
		// directory, no emulator, nothing written.
		assertUntouched(t, env)
	})

	t.Run("hidden state directory inside the tree stays out and quiet", func(t *testing.T) {
		env := newKVEnv(t, emulator.Faults{})
		mustWrite(t, filepath.Join(env.root, "index.html"), "index")
		env.stateDir = filepath.Join(env.root, ".kvsync")
		env.writeConfig("", "")
		d := env.startDaemon()
		d.waitReady(converge)
		env.waitConverged(t, map[string]kvEntry{"index.html": {Value: "index"}}, converge)
		// The state store is written after each request; were it watched and
		// published, each write would be one more write request.
		// The barrier's own markers make the store write again, so were it
		// published, its writes would show beside the markers' PUTs.
		before := env.writeCounts()
		markers, n := env.barrier(t, d)
		if extra := env.writesSince(before, n); extra != "" {
			t.Errorf("write requests beyond the barrier's markers: %s", extra)
		}
		d.stop()
		env.waitConverged(t, with(map[string]kvEntry{"index.html": {Value: "index"}}, markers), converge)
	})
}

// assertUntouched fails when kvsync sent the emulator any request or
// created the state directory.
func assertUntouched(t *testing.T, env *kvEnv) {
	t.Helper()
	if c := env.em.Counts(); len(c) != 0 {
		t.Errorf("kvsync sent requests: %v", c)
	}
	if n := len(env.em.Snapshot(testAccount, testNamespace)); n != 0 {
		t.Errorf("%d keys written", n)
	}
	if _, err := os.Stat(env.stateDir); !os.IsNotExist(err) {
		t.Errorf("the state directory %s was created (%v)", env.stateDir, err)
	}
}
