package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/internal/config"
)

func TestWriteBudget(t *testing.T) {
	tests := []struct {
		name string
		api  string // the config's api block, after account_id
		want string
	}{
		{"defaults", "",
			"API budget: this config may send up to 1,100 requests per 5 minutes (rate 3.33/s × 300 + burst 100) of the account's 1,200; processes sharing a token must stay under 1,200 together\n"},
		{"one of three hosts on a token", "  rate: 1\n  burst: 60\n",
			"API budget: this config may send up to 360 requests per 5 minutes (rate 1/s × 300 + burst 60) of the account's 1,200; processes sharing a token must stay under 1,200 together\n"},
		{"fractional rate", "  rate: 0.5\n  burst: 1\n",
			"API budget: this config may send up to 151 requests per 5 minutes (rate 0.5/s × 300 + burst 1) of the account's 1,200; processes sharing a token must stay under 1,200 together\n"},
		{"raised account budget", "  rate: 40\n  burst: 1000\n  budget: 13000\n",
			"API budget: this config may send up to 13,000 requests per 5 minutes (rate 40/s × 300 + burst 1,000) of the account's 13,000; processes sharing a token must stay under 13,000 together\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte("api:\n  account_id: a\n"+tt.api+"syncs:\n  - dir: /srv\n    namespace_id: n\n"), "kvsync.yaml")
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			writeBudget(&buf, cfg)
			if buf.String() != tt.want {
				t.Errorf("got  %q\nwant %q", buf.String(), tt.want)
			}
		})
	}
}

// TestWriteBudgetLeases: with leader election on, each sync's Lease is
// listed, named or derived; with it off, none.
func TestWriteBudgetLeases(t *testing.T) {
	const syncs = "syncs:\n  - name: site\n    dir: /srv/site\n    namespace_id: n1\n    prefix: site/\n    lease_name: kvsync-site\n" +
		"  - name: blog\n    dir: /srv/blog\n    namespace_id: n1\n    prefix: blog/\n"
	for _, tt := range []struct {
		name, election string
		want           []string
		wantNot        []string
	}{
		{"on", "leader_election:\n  enabled: true\n  namespace: web\n  identity: site-0\n", []string{
			"leader election: Leases in namespace web, this process as \"site-0\"; its Role must grant get and update on each:\n",
			"  sync \"site\": Lease kvsync-site\n",
			"  sync \"blog\": Lease " + config.DefaultLeaseName("n1", "blog/") + "\n",
		}, nil},
		{"off", "", nil, []string{"leader election", "Lease"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tt.election+"api:\n  account_id: a\n"+syncs), "kvsync.yaml")
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			writeBudget(&buf, cfg)
			for _, w := range tt.want {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, buf.String())
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(buf.String(), w) {
					t.Errorf("output has %q:\n%s", w, buf.String())
				}
			}
		})
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1200: "1,200", 123456: "123,456", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestCheckPrintsBudget: `kvsync check` prints the budget line of the
// config it checks.
func TestCheckPrintsBudget(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "a.txt"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "kvsync.yaml")
	body := fmt.Sprintf("state_dir: %s\napi:\n  account_id: a\n  rate: 2\n  burst: 50\nsyncs:\n  - dir: %s\n    namespace_id: n\n", filepath.Join(dir, "state"), tree)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CLOUDFLARE_API_TOKEN", "t")
	var stdout, stderr bytes.Buffer
	if err := cmdCheck(context.Background(), []string{"--config", conf}, &stdout, &stderr); err != nil {
		t.Fatalf("check: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	want := "API budget: this config may send up to 650 requests per 5 minutes (rate 2/s × 300 + burst 50) of the account's 1,200"
	if !strings.Contains(stdout.String(), want) {
		t.Errorf("check output lacks %q:\n%s", want, stdout.String())
	}
}
