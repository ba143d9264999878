package main

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

const committed = "../kvsync-dashboard.json"

// TestCommitted fails when the JSON users import is not what this program
// writes: someone edited the JSON by hand, or changed main.go and did not
// regenerate.
func TestCommitted(t *testing.T) {
	var buf bytes.Buffer
	if err := render(&buf); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("%s is not the generator's output; regenerate it:\n\tcd deploy/grafana/gen && go run . > ../kvsync-dashboard.json", committed)
	}
}

// TestRoundTrip decodes the committed JSON with the SDK's own types, as a
// tool that imports dashboards would, and checks each panel kept its
// queries: a field the SDK writes but cannot read back would show here.
func TestRoundTrip(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	raw, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard.Dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if d.Uid == nil || *d.Uid != "kvsync" {
		t.Errorf("uid = %v, want kvsync", d.Uid)
	}
	panels := 0
	for _, p := range d.Panels {
		if p.Panel == nil {
			continue
		}
		panels++
		if len(p.Panel.Targets) == 0 {
			t.Errorf("panel %d has no query", p.Panel.Id)
		}
	}
	if panels < 12 {
		t.Errorf("%d panels decoded, want at least 12", panels)
	}
}
