package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/testkit"
)

// floodFDLimit is the RLIMIT_NOFILE the daemon runs under in
// TestIdleConnectionFloodUnderLowFDLimit: the attacker's test of issue 11
// ran kvsync with 128 descriptors and held 140 idle connections.
const floodFDLimit = 128

// floodConns is how many idle keep-alive connections the test opens to each
// of the two listeners: together far more than the process has descriptors.
const floodConns = 150

var (
	emulatorURLRE = regexp.MustCompile(`publishing into the local emulator at (\S+)`)
	tooManyFiles  = "too many open files"
)

// TestIdleConnectionFloodUnderLowFDLimit is issue 11's attack on the real
// binary: `kvsync run --local` under RLIMIT_NOFILE=128, its metrics port and
// its emulator each flooded with idle keep-alive connections. kvsync must
// keep publishing changed files and files in new directories, and /healthz
// must keep answering.
func TestIdleConnectionFloodUnderLowFDLimit(t *testing.T) {
	// prlimit is in util-linux, which Debian installs on every system
	// (Essential: yes); it runs the command with the limit set, in place.
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit is needed for this test (Debian package util-linux)")
	}
	base := t.TempDir()
	root := filepath.Join(base, "root")
	mustWrite(t, filepath.Join(root, "index.html"), "v1")
	mustWrite(t, filepath.Join(root, "docs", "a.txt"), "a")

	limit := fmt.Sprintf("--nofile=%d:%d", floodFDLimit, floodFDLimit)
	cmd := exec.Command(prlimit, limit, "--", kvsyncBin, "run", "--local", "--local-listen", "127.0.0.1:0",
		"--dir", root, "--state-dir", filepath.Join(base, "state"), "--metrics-listen", "127.0.0.1:0", "--log-level", "debug")
	logs := &testkit.Buffer{}
	stdout := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = stdout, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("kvsync logs:\n%s", tail(logs.String(), 60))
		}
	})

	// Both addresses, from the daemon's own output.
	var metricsURL, apiURL string
	poll(t, 30*time.Second, "kvsync run --local did not report its addresses", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("kvsync exited early: %v\n%s", err, logs.String())
		default:
		}
		if m := metricsAddrRE.FindStringSubmatch(logs.String()); m != nil {
			metricsURL = "http://" + m[1]
		}
		if m := emulatorURLRE.FindStringSubmatch(stdout.String()); m != nil {
			apiURL = m[1]
		}
		return metricsURL != "" && apiURL != ""
	})
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	emulatorAddr, metricsAddr := u.Host, strings.TrimPrefix(metricsURL, "http://")
	ns := apiURL + "/accounts/local/storage/kv/namespaces/local"

	client := &http.Client{Timeout: 5 * time.Second}
	getOK := func(u string, auth bool) (string, bool) {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+localToken)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err == nil && resp.StatusCode == http.StatusOK
	}
	keyHolds := func(key, want string) func() bool {
		return func() bool {
			got, ok := getOK(ns+"/values/"+url.PathEscape(key), true)
			return ok && got == want
		}
	}
	poll(t, 60*time.Second, "not ready: the initial sync did not finish", func() bool { _, ok := getOK(metricsURL+"/readyz", false); return ok })
	poll(t, 30*time.Second, "the initial sync did not publish index.html", keyHolds("index.html", "v1"))
	t.Logf("descriptors before the flood: %d of %d", openFDs(t, cmd.Process.Pid), floodFDLimit)

	// The flood: each connection sends one request, so that it is an idle
	// keep-alive connection once answered, and is then left open. Nothing
	// waits for the answers: a server that has run out of descriptors
	// never gives them.
	flood := func(addr, path string) []net.Conn {
		var conns []net.Conn
		for range floodConns {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("flooding %s: %v", addr, err)
			}
			t.Cleanup(func() { c.Close() })
			if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatalf("flooding %s: %v", addr, err)
			}
			conns = append(conns, c)
		}
		return conns
	}
	metricsFlood := flood(metricsAddr, "/healthz")
	emulatorFlood := flood(emulatorAddr, "/__emulator/healthz")
	// Let the server take in the flood: every connection answered or
	// closed. (Before the fix, the connections past the descriptor limit
	// stay in the kernel's backlog unanswered; the test then goes on to
	// show what that does to the daemon.)
	answered, closed := drain(append(metricsFlood, emulatorFlood...), 10*time.Second)
	fds := openFDs(t, cmd.Process.Pid)
	t.Logf("flood of %d idle connections to each listener: %d answered, %d of them closed by kvsync by now; descriptors in use %d of %d",
		floodConns, answered, closed, fds, floodFDLimit)

	poll(t, 30*time.Second, "/healthz does not answer 200 behind the flood", func() bool { _, ok := getOK(metricsURL+"/healthz", false); return ok })

	mustWrite(t, filepath.Join(root, "index.html"), "v2")
	poll(t, 60*time.Second, "a changed file was not uploaded behind the flood", keyHolds("index.html", "v2"))

	mustWrite(t, filepath.Join(root, "added.txt"), "added")
	poll(t, 60*time.Second, "an added file was not uploaded behind the flood", keyHolds("added.txt", "added"))

	// A new directory must be watched: a file created in it after the
	// directory itself was seen is published too.
	if err := os.Mkdir(filepath.Join(root, "fresh"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(root, "fresh", "first.txt"), "first")
	poll(t, 60*time.Second, "a file in a new directory was not published", keyHolds("fresh/first.txt", "first"))
	mustWrite(t, filepath.Join(root, "fresh", "second.txt"), "second")
	poll(t, 60*time.Second, "a later file in the new directory was not published (directory not watched)", keyHolds("fresh/second.txt", "second"))

	poll(t, 30*time.Second, "/healthz does not answer 200 at the end", func() bool { _, ok := getOK(metricsURL+"/healthz", false); return ok })
	if strings.Contains(strings.ToLower(logs.String()), tooManyFiles) {
		t.Errorf("kvsync ran out of descriptors:\n%s", grepLines(logs.String(), tooManyFiles))
	}
	t.Logf("descriptors at the end: %d of %d", openFDs(t, cmd.Process.Pid), floodFDLimit)
}

// poll checks cond until it holds, failing with what after within.
func poll(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drain reads each connection's answer for up to within in all, and
// returns how many were answered and how many of those the server has
// closed since (an idle connection closed to make room).
func drain(conns []net.Conn, within time.Duration) (answered, closed int) {
	deadline := time.Now().Add(within)
	var readers []*bufio.Reader
	var open []net.Conn
	for _, c := range conns {
		c.SetReadDeadline(deadline)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered++
		readers, open = append(readers, br), append(open, c)
	}
	for i, c := range open {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := readers[i].ReadByte(); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				closed++
			}
		}
		c.SetReadDeadline(time.Time{})
	}
	return answered, closed
}

// openFDs counts the descriptors pid holds.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Logf("counting descriptors: %v", err)
		return -1
	}
	return len(ents)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(strings.ToLower(l), sub) {
			out = append(out, l)
		}
	}
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("... and %d more", len(out)-10))
	}
	return strings.Join(out, "\n")
}
