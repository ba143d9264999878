package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestEmulatorAnswersTheDocumentedCurlCalls runs `kvsync emulator` and sends
// it Cloudflare's documented curl calls, with the real curl: a multipart
// write (also with metadata and a TTL) that reads return, and a key sent as
// a%3Ab%21c%25 that is stored and listed as a:b!c%.
func TestEmulatorAnswersTheDocumentedCurlCalls(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed for this test (Debian package curl)")
	}
	const token = "curl-token"
	emu := exec.Command(kvsyncBin, "emulator", "--listen", "127.0.0.1:0")
	emu.Env = append(os.Environ(), "KVSYNC_EMULATOR_TOKEN="+token)
	out, err := emu.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Process.Kill(); emu.Wait() })
	base := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`API base URL: (\S+)`)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				base <- m[1]
			}
		}
	}()
	var api string
	select {
	case api = <-base:
	case <-time.After(30 * time.Second):
		t.Fatal("kvsync emulator did not say where it listens")
	}
	ns := api + "/accounts/023e105f4ecef8ad9ca31a8372d0c353/storage/kv/namespaces/0f2ac74b498b48028cb68387c421e279"
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(curl, append([]string{"-sS", "-H", "Authorization: Bearer " + token}, args...)...)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	success := func(body string) {
		t.Helper()
		var env struct {
			Success bool `json:"success"`
		}
		if err := json.Unmarshal([]byte(body), &env); err != nil || !env.Success {
			t.Fatalf("not a success envelope: %s", body)
		}
	}

	success(run(ns+"/values/plain", "-X", "PUT", "-H", "Content-Type: multipart/form-data", "-F", "value=Some Value"))
	if got := run(ns + "/values/plain"); got != "Some Value" {
		t.Fatalf("read back %q", got)
	}

	success(run(ns+"/values/with-meta?expiration_ttl=120", "-X", "PUT", "-H", "Content-Type: multipart/form-data",
		"-F", "value=Some Value", "-F", `metadata={"a":1}`))
	if got := run(ns + "/values/with-meta"); got != "Some Value" {
		t.Fatalf("read back %q", got)
	}
	if got := run(ns + "/metadata/with-meta"); !strings.Contains(got, `"result":{"a":1}`) {
		t.Fatalf("metadata read back: %s", got)
	}
	headers := run("-D", "-", "-o", "/dev/null", ns+"/values/with-meta")
	m := regexp.MustCompile(`(?i)\nexpiration: (\d+)`).FindStringSubmatch(headers)
	if m == nil {
		t.Fatalf("no expiration header on a key written with expiration_ttl=120:\n%s", headers)
	}

	success(run(ns+"/values/a%3Ab%21c%25", "-X", "PUT", "-H", "Content-Type: multipart/form-data", "-F", "value=escaped"))
	list := run(ns + "/keys?prefix=a")
	if !strings.Contains(list, `"name":"a:b!c%"`) {
		t.Fatalf("a%%3Ab%%21c%%25 not listed as a:b!c%%: %s", list)
	}
	if got := run(ns + "/values/a%3Ab%21c%25"); got != "escaped" {
		t.Fatalf("read back %q", got)
	}
}
