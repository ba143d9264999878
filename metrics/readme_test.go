package metrics

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// readmeMetric is a row of README's metrics table: one metric, its type and
// its label names.
type readmeMetric struct {
	typ    string
	labels []string
}

var backticked = regexp.MustCompile("`([^`]+)`")

// readmeMetrics reads the table under README's "| metric | type | labels |"
// header. A row may name several metrics in its first column; the labels
// are the backticked names of the third (values and notes stand unquoted).
func readmeMetrics(text string) (map[string]readmeMetric, error) {
	lines := strings.Split(text, "\n")
	start := slices.IndexFunc(lines, func(l string) bool {
		return strings.HasPrefix(strings.ReplaceAll(l, " ", ""), "|metric|type|labels|")
	})
	if start < 0 {
		return nil, fmt.Errorf(`no "| metric | type | labels |" table`)
	}
	out := map[string]readmeMetric{}
	for _, l := range lines[start+2:] {
		if !strings.HasPrefix(l, "|") {
			break
		}
		cols := strings.Split(strings.Trim(l, "|"), "|")
		if len(cols) < 3 {
			return nil, fmt.Errorf("row %q has %d columns, want at least 3", l, len(cols))
		}
		var labels []string
		for _, m := range backticked.FindAllStringSubmatch(cols[2], -1) {
			labels = append(labels, m[1])
		}
		sort.Strings(labels)
		names := backticked.FindAllStringSubmatch(cols[0], -1)
		if len(names) == 0 {
			return nil, fmt.Errorf("row %q names no metric", l)
		}
		for _, n := range names {
			if _, dup := out[n[1]]; dup {
				return nil, fmt.Errorf("%s has two rows", n[1])
			}
			out[n[1]] = readmeMetric{typ: strings.TrimSpace(cols[1]), labels: labels}
		}
	}
	return out, nil
}

// TestReadmeListsEveryMetric: README's metrics table and the registered
// collectors agree on every name, type and label, both ways.
func TestReadmeListsEveryMetric(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented, err := readmeMetrics(string(raw))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	reg, _ := everySeries(t)
	registered := map[string]readmeMetric{}
	for _, mf := range gather(t, reg) {
		var labels []string
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if !slices.Contains(labels, l.GetName()) {
					labels = append(labels, l.GetName())
				}
			}
		}
		sort.Strings(labels)
		registered[mf.GetName()] = readmeMetric{typ: strings.ToLower(mf.GetType().String()), labels: labels}
	}
	for _, d := range diffMetrics(registered, documented) {
		t.Error(d)
	}
}

// diffMetrics says how the registered metrics and README's table differ.
func diffMetrics(registered, documented map[string]readmeMetric) []string {
	var diffs []string
	for name, r := range registered {
		d, ok := documented[name]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s is registered but missing from README's metrics table", name))
		case d.typ != r.typ:
			diffs = append(diffs, fmt.Sprintf("%s is a %s; README's table says %s", name, r.typ, d.typ))
		case !slices.Equal(d.labels, r.labels):
			diffs = append(diffs, fmt.Sprintf("%s has labels %v; README's table says %v", name, r.labels, d.labels))
		}
	}
	for name := range documented {
		if _, ok := registered[name]; !ok {
			diffs = append(diffs, fmt.Sprintf("README's metrics table names %s, which is not registered", name))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// TestReadmeMetricsCatchesDrift shows the comparison fails for each kind of
// drift, so TestReadmeListsEveryMetric cannot pass by reading nothing.
func TestReadmeMetricsCatchesDrift(t *testing.T) {
	table, err := readmeMetrics("intro\n\n| metric | type | labels | what |\n| --- | --- | --- | --- |\n" +
		"| `kvsync_a_total` | counter | `sync`, `result`: ok, `x`-free note | a |\n" +
		"| `kvsync_b`, `kvsync_c` | gauge | | b and c |\n\nafter\n| `kvsync_not_in_table` | gauge | | |\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(table); got != "map[kvsync_a_total:{counter [result sync x]} kvsync_b:{gauge []} kvsync_c:{gauge []}]" {
		t.Fatalf("parsed %s", got)
	}
	// The note's backticked `x` reads as a label: the table must keep
	// values and notes unquoted, and this row is drift.
	reg := map[string]readmeMetric{
		"kvsync_a_total": {"counter", []string{"result", "sync"}},
		"kvsync_b":       {"gauge", nil},
		"kvsync_c":       {"counter", nil},
		"kvsync_d":       {"gauge", nil},
	}
	table["kvsync_e"] = readmeMetric{"gauge", nil}
	want := []string{
		"README's metrics table names kvsync_e, which is not registered",
		"kvsync_a_total has labels [result sync]; README's table says [result sync x]",
		"kvsync_c is a counter; README's table says gauge",
		"kvsync_d is registered but missing from README's metrics table",
	}
	if got := diffMetrics(reg, table); !slices.Equal(got, want) {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := readmeMetrics("no table here"); err == nil {
		t.Error("a README without the table read without error")
	}
}
