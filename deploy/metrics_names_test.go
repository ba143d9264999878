package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
)

// The alerting rules and the dashboard name metrics in strings that no
// compiler checks. These tests read every PromQL expression in them and
// require each metric, each label a selector or a grouping names, and each
// label value a selector asks for by equality, to be in a scrape of a real
// `kvsync run` driven into the states the alerts are about.
//
// Expressions are read by a small tokenizer rather than Prometheus's PromQL
// parser: that parser is github.com/prometheus/prometheus, a dependency far
// larger than kvsync itself, for a job that needs only selectors and
// grouping labels. TestPromQLRefs pins what the tokenizer makes of every
// construct the files use.

const (
	rulesFile     = "prometheus/kvsync.rules.yaml"
	dashboardFile = "grafana/kvsync-dashboard.json"
)

// notFromKvsync are names an expression may use that no kvsync scrape can
// hold, with the reason.
var notFromKvsync = map[string]string{
	"up": "Prometheus writes it for each scrape of a target; the target never exports it",
}

// electionOnly are kvsync's metrics that exist only when leader_election is
// enabled, with the labels each carries. A run with election needs a
// Kubernetes API server, which TestMetricNamesInScrape does not start, so its
// scrape cannot hold them: an expression may name them, and only these labels
// with them. TestElectionOnlyMetricsAreKvsyncs checks that kvsync's source
// registers each name and that the run without election exports none.
var electionOnly = map[string][]string{
	"kvsync_leader":                   {"sync"},
	"kvsync_leader_transitions_total": {"sync", "to"},
	"kvsync_leader_seconds_total":     {"sync"},
}

// targetLabels are attached by Prometheus from the scrape configuration, not
// exported by kvsync.
var targetLabels = []string{"job", "instance"}

type matcher struct{ label, op, value string }

type selectorRef struct {
	metric   string
	matchers []matcher
}

// promqlRefs is what one expression asks of the scrape.
type promqlRefs struct {
	selectors []selectorRef
	grouping  []string // labels of by, without, on, ignoring, group_left/right
}

func (r promqlRefs) metrics() []string {
	var m []string
	for _, s := range r.selectors {
		m = append(m, s.metric)
	}
	slices.Sort(m)
	return slices.Compact(m)
}

var (
	// PromQL keywords that read like metric names where they stand.
	promqlKeywords = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
		"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
		"limitk": true, "limit_ratio": true, "start": true, "end": true, "inf": true, "nan": true,
	}
	groupingKeywords = map[string]bool{
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	}
	identRE  = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)
	numberRE = regexp.MustCompile(`^(0x[0-9a-fA-F]+|[0-9.]+([eE][-+]?[0-9]+)?([a-zA-Z]+[0-9]*)*)`)
	varRE    = regexp.MustCompile(`^\$(\{[^}]*\}|[a-zA-Z_][a-zA-Z0-9_]*)`)
	stringRE = regexp.MustCompile(`^("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`" + `)`)
	opRE     = regexp.MustCompile(`^(==|!=|>=|<=|=~|!~|[-+*/%^<>=,()@])`)
	// Grafana's template query label_values(selector, label).
	labelValuesRE = regexp.MustCompile(`^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)
)

type ptoken struct {
	kind string // ident, number, string, var, op, matchers, range
	text string
	ms   []matcher // kind "matchers"
}

func tokenize(expr string) ([]ptoken, error) {
	var toks []ptoken
	s := expr
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			return toks, nil
		}
		switch {
		case s[0] == '#':
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i:]
			} else {
				s = ""
			}
		case s[0] == '{':
			end := closing(s, '{', '}')
			if end < 0 {
				return nil, fmt.Errorf("unclosed { in %q", expr)
			}
			ms, err := parseMatchers(s[1:end])
			if err != nil {
				return nil, fmt.Errorf("%v in %q", err, expr)
			}
			toks = append(toks, ptoken{kind: "matchers", ms: ms})
			s = s[end+1:]
		case s[0] == '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return nil, fmt.Errorf("unclosed [ in %q", expr)
			}
			toks = append(toks, ptoken{kind: "range", text: s[:end+1]})
			s = s[end+1:]
		default:
			var kind, m string
			for _, c := range []struct {
				kind string
				re   *regexp.Regexp
			}{{"string", stringRE}, {"var", varRE}, {"number", numberRE}, {"ident", identRE}, {"op", opRE}} {
				if m = c.re.FindString(s); m != "" {
					kind = c.kind
					break
				}
			}
			if m == "" {
				return nil, fmt.Errorf("cannot read %q in %q", s, expr)
			}
			toks = append(toks, ptoken{kind: kind, text: m})
			s = s[len(m):]
		}
	}
}

// closing is the index of the brace closing s[0], skipping quoted strings.
func closing(s string, open, close byte) int {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"', '\'', '`':
			m := stringRE.FindString(s[i:])
			if m == "" {
				return -1
			}
			i += len(m) - 1
		case open:
			depth++
		case close:
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

var matcherRE = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`" + `)\s*(,|$)`)

func parseMatchers(s string) ([]matcher, error) {
	var ms []matcher
	for strings.TrimSpace(s) != "" {
		m := matcherRE.FindStringSubmatch(s)
		if m == nil {
			return nil, fmt.Errorf("cannot read label matcher %q", s)
		}
		v := m[3]
		if v[0] == '"' {
			if err := json.Unmarshal([]byte(v), &v); err != nil {
				return nil, fmt.Errorf("label value %s: %v", m[3], err)
			}
		} else {
			v = v[1 : len(v)-1]
		}
		ms = append(ms, matcher{label: m[1], op: m[2], value: v})
		s = s[len(m[0]):]
	}
	return ms, nil
}

// parsePromQL lists the selectors and grouping labels of expr; a Grafana
// label_values(selector, label) query counts as its selector.
func parsePromQL(expr string) (promqlRefs, error) {
	if m := labelValuesRE.FindStringSubmatch(expr); m != nil {
		expr = m[1]
	}
	toks, err := tokenize(expr)
	if err != nil {
		return promqlRefs{}, err
	}
	var r promqlRefs
	next := func(i int) ptoken {
		if i+1 < len(toks) {
			return toks[i+1]
		}
		return ptoken{}
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.kind == "ident" && groupingKeywords[t.text]:
			if n := next(i); n.kind == "op" && n.text == "(" {
				j := i + 2
				for ; j < len(toks) && toks[j].text != ")"; j++ {
					if toks[j].kind == "ident" {
						r.grouping = append(r.grouping, toks[j].text)
					}
				}
				i = j
			}
		case t.kind == "ident" && (promqlKeywords[strings.ToLower(t.text)] || next(i).text == "("):
			// A keyword, or a function called.
		case t.kind == "ident":
			s := selectorRef{metric: t.text}
			if n := next(i); n.kind == "matchers" {
				s.matchers = n.ms
				i++
			}
			r.selectors = append(r.selectors, s)
		case t.kind == "matchers":
			return r, fmt.Errorf("a selector without a metric name in %q: name the metric", expr)
		}
	}
	return r, nil
}

// ruleExprs reads every expression of the alerting rules, by alert name.
func ruleExprs(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out["rule "+r.Alert+r.Record] = r.Expr
		}
	}
	if len(out) == 0 {
		t.Fatalf("no rules in %s", rulesFile)
	}
	return out
}

// dashboardExprs reads every query of the dashboard: each panel target's
// expr and each query variable's query.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
			Panels json.RawMessage `json:"panels"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		if len(p.Panels) > 0 && string(p.Panels) != "[]" {
			t.Fatalf("panel %q nests panels (a collapsed row): read them too", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Fatalf("panel %q target %s has no expr", p.Title, tg.RefID)
			}
			out[fmt.Sprintf("panel %q %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: query is not a string: %s", v.Name, v.Query)
		}
		out["variable "+v.Name] = q
	}
	if len(out) == 0 {
		t.Fatalf("no queries in %s", dashboardFile)
	}
	return out
}

func TestPromQLRefs(t *testing.T) {
	sel := func(metric string, ms ...matcher) selectorRef { return selectorRef{metric: metric, matchers: ms} }
	for _, tc := range []struct {
		expr     string
		want     []selectorRef
		grouping []string
	}{
		{expr: `up{job="kvsync"} == 0`, want: []selectorRef{sel("up", matcher{"job", "=", "kvsync"})}},
		{expr: `absent(up{job="kvsync"})`, want: []selectorRef{sel("up", matcher{"job", "=", "kvsync"})}},
		{
			expr: "(\n  time() - kvsync_a > 2 * 3600\n  and kvsync_a > 0\n)\nor\n(kvsync_a == 0 and on (job, instance) time() - process_start_time_seconds > 1e9)",
			want: []selectorRef{sel("kvsync_a"), sel("kvsync_a"), sel("kvsync_a"), sel("process_start_time_seconds")}, grouping: []string{"job", "instance"},
		},
		{
			expr:     `sum by (job, cf_code) (increase(kvsync_b{cf_code!~"971|10022", x='a}b'}[15m])) > 5`,
			want:     []selectorRef{sel("kvsync_b", matcher{"cf_code", "!~", "971|10022"}, matcher{"x", "=", "a}b"})},
			grouping: []string{"job", "cf_code"},
		},
		{
			expr:     `histogram_quantile(0.99, sum by (le, op) (rate(kvsync_c_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])))`,
			want:     []selectorRef{sel("kvsync_c_bucket", matcher{"job", "=~", "$job"}, matcher{"instance", "=~", "$instance"})},
			grouping: []string{"le", "op"},
		},
		{
			expr:     `a unless ignoring (result) group_left (op) b offset 5m / count without (x) (c) * 0x1F`,
			want:     []selectorRef{sel("a"), sel("b"), sel("c")},
			grouping: []string{"result", "op", "x"},
		},
		{expr: `label_values(kvsync_build_info{job=~"$job"}, instance)`, want: []selectorRef{sel("kvsync_build_info", matcher{"job", "=~", "$job"})}},
	} {
		got, err := parsePromQL(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if fmt.Sprint(got.selectors) != fmt.Sprint(tc.want) || fmt.Sprint(got.grouping) != fmt.Sprint(tc.grouping) {
			t.Errorf("%s:\n got %v by %v\nwant %v by %v", tc.expr, got.selectors, got.grouping, tc.want, tc.grouping)
		}
	}
	for _, bad := range []string{`{__name__="x"}`, `x{job="a"`, `x{job=a}`, `x ? y`} {
		if _, err := parsePromQL(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// TestRulesAndDashboardParse reads every expression of both files: one that
// the tokenizer cannot read, or that names no metric, would be skipped
// unseen by TestMetricNamesInScrape.
func TestRulesAndDashboardParse(t *testing.T) {
	for _, exprs := range []map[string]string{ruleExprs(t), dashboardExprs(t)} {
		for where, e := range exprs {
			r, err := parsePromQL(e)
			if err != nil {
				t.Errorf("%s: %v", where, err)
			} else if len(r.selectors) == 0 {
				t.Errorf("%s names no metric: %s", where, e)
			}
		}
	}
}

// series is one sample line of a text-format scrape.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

var scrapeLabelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

func parseScrape(text string) []series {
	var out []series
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		s := series{labels: map[string]string{}}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 && i < len(name) {
			name = line[:i]
			end := strings.LastIndexByte(line, '}')
			for _, m := range scrapeLabelRE.FindAllStringSubmatch(line[i+1:end], -1) {
				s.labels[m[1]] = strings.NewReplacer(`\"`, `"`, `\\`, `\`, `\n`, "\n").Replace(m[2])
			}
			rest = line[end+1:]
		}
		if f := strings.Fields(rest); len(f) > 0 {
			s.value, _ = strconv.ParseFloat(f[0], 64)
		}
		s.name = name
		out = append(out, s)
	}
	return out
}

// checkRefs lists what one expression asks for and the scrape lacks.
func checkRefs(r promqlRefs, scrape []series) []string {
	var missing []string
	byName := map[string][]series{}
	for _, s := range scrape {
		byName[s.name] = append(byName[s.name], s)
	}
	has := func(ss []series, label string) bool {
		return slices.ContainsFunc(ss, func(s series) bool { _, ok := s.labels[label]; return ok })
	}
	for _, sel := range r.selectors {
		if _, ok := notFromKvsync[sel.metric]; ok {
			continue
		}
		if labels, ok := electionOnly[sel.metric]; ok {
			for _, m := range sel.matchers {
				if !slices.Contains(targetLabels, m.label) && !slices.Contains(labels, m.label) {
					missing = append(missing, fmt.Sprintf("label %s of %s (it has %s)", m.label, sel.metric, strings.Join(labels, ", ")))
				}
			}
			continue
		}
		ss := byName[sel.metric]
		if len(ss) == 0 {
			missing = append(missing, "metric "+sel.metric)
			continue
		}
		for _, m := range sel.matchers {
			if slices.Contains(targetLabels, m.label) {
				continue
			}
			if !has(ss, m.label) {
				missing = append(missing, fmt.Sprintf("label %s of %s", m.label, sel.metric))
				continue
			}
			if v := varRE.FindString(m.value); v != "" && v == m.value {
				// A dashboard variable (sync=~"$sync"): Grafana fills
				// it with values read from the scrape itself, so the
				// label being there is all it needs.
				continue
			}
			var match func(string) bool
			switch m.op {
			case "=":
				match = func(v string) bool { return v == m.value }
			case "=~":
				re, err := regexp.Compile("^(?:" + m.value + ")$")
				if err != nil {
					missing = append(missing, fmt.Sprintf("valid regexp %s=~%q: %v", m.label, m.value, err))
					continue
				}
				match = re.MatchString
			default:
				// A negative matcher is satisfied by absence: nothing to ask.
				continue
			}
			if !slices.ContainsFunc(ss, func(s series) bool { v, ok := s.labels[m.label]; return ok && match(v) }) {
				missing = append(missing, fmt.Sprintf("a series %s{%s%s%q}", sel.metric, m.label, m.op, m.value))
			}
		}
	}
	// A grouping label must be on at least one metric the expression reads:
	// which one it applies to would take a real parse, and a misspelt label
	// is on none of them.
	var all []series
	for _, sel := range r.selectors {
		all = append(all, byName[sel.metric]...)
	}
	for _, l := range r.grouping {
		onElectionOnly := slices.ContainsFunc(r.selectors, func(sel selectorRef) bool {
			return slices.Contains(electionOnly[sel.metric], l)
		})
		if !slices.Contains(targetLabels, l) && !has(all, l) && !onElectionOnly {
			missing = append(missing, "grouping label "+l+" on "+strings.Join(r.metrics(), ", "))
		}
	}
	return missing
}

func TestCheckRefsCatchesMissing(t *testing.T) {
	scrape := parseScrape(`# TYPE kvsync_x_total counter
kvsync_x_total{op="put",code="200"} 3
kvsync_x_total{op="put",code="429"} 1
kvsync_g 0
kvsync_h 2.5
kvsync_y{a="x y",b="}"} 7
`)
	if got := fmt.Sprint(scrape); got != `[{kvsync_x_total map[code:200 op:put] 3} {kvsync_x_total map[code:429 op:put] 1} {kvsync_g map[] 0} {kvsync_h map[] 2.5} {kvsync_y map[a:x y b:}] 7}]` {
		t.Errorf("parsed scrape: %s", got)
	}
	// kvsync_h and kvsync_y were there for the parser; from here on,
	// kvsync_y is a metric the scrape lacks.
	scrape = scrape[:3]
	for _, tc := range []struct {
		expr    string
		missing int
	}{
		{`sum by (job, code) (rate(kvsync_x_total{code="429", op=~"put|get"}[5m])) + kvsync_g`, 0},
		{`up == 0`, 0},
		{`kvsync_y`, 1},
		{`kvsync_x_total{status="429"}`, 1},
		{`kvsync_x_total{code="500"}`, 1},
		{`kvsync_x_total{code=~"5.."}`, 1},
		{`kvsync_x_total{code!="500", op!~"get"}`, 0},
		{`kvsync_x_total{op=~"$op"}`, 0},
		{`kvsync_x_total{sync=~"$sync"}`, 1},
		{`kvsync_x_total{op=~"$op|x"}`, 1},
		{`sum by (cfcode) (kvsync_x_total)`, 1},
		// Election-only metrics are not in the scrape; their labels are
		// checked against electionOnly instead.
		{`max by (job, sync) (kvsync_leader) == 0`, 0},
		{`kvsync_leader_transitions_total{to="leader"} unless on (instance) kvsync_g`, 0},
		{`max by (job, lease) (kvsync_leader)`, 1},
		{`kvsync_leader{lease="x"}`, 1},
		{`kvsync_leaders`, 1},
	} {
		r, err := parsePromQL(tc.expr)
		if err != nil {
			t.Fatal(err)
		}
		if got := checkRefs(r, scrape); len(got) != tc.missing {
			t.Errorf("%s: missing %q, want %d", tc.expr, got, tc.missing)
		}
	}
}

// TestMetricNamesInScrape runs the built kvsync against an emulator that
// answers with 5xx errors and runs out of request budget, over a tree with a
// file held back by an invalid sidecar, and scrapes it once the series the
// rules and panels need have appeared.
func TestMetricNamesInScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs kvsync")
	}
	exprs := ruleExprs(t)
	for k, v := range dashboardExprs(t) {
		exprs[k] = v
	}

	dir := t.TempDir()
	bin := filepath.Join(dir, "kvsync")
	build := exec.Command("go", "build", "-o", bin, "./cmd/kvsync")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	em, err := emulator.New(emulator.Options{Faults: emulator.Faults{
		// A budget this small is spent within the first few writes, so
		// 429s (code 971) and kvsync's pause of every request follow.
		Budget: 6, BudgetWindow: 3 * time.Second, BlockFor: time.Second,
		ServerErrorRate: 0.25, Seed: 15,
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(em)
	t.Cleanup(func() { srv.Close(); em.Close() })

	root := filepath.Join(dir, "tree")
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	write("index.html", "<h1>hello</h1>")
	write("held.txt", "kept out of KV while its sidecar is invalid")
	write("held.txt.meta.json", "{not json")
	config := filepath.Join(dir, "kvsync.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `state_dir: %s
metrics_listen: 127.0.0.1:0
log_level: debug
api:
  base_url: %s/client/v4
  account_id: acct
syncs:
  - name: names
    dir: %s
    namespace_id: ns
    quiet: 50ms
    max_delay: 200ms
`, filepath.Join(dir, "state"), srv.URL, root), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "run", "--config", config)
	cmd.Env = append(os.Environ(), "CLOUDFLARE_API_TOKEN=names-token")
	logs := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// exited is closed when the process is gone; waitErr is then its status.
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("kvsync logs:\n%s", lastLines(logs.String(), 60))
		}
	})

	metricsURL := waitMetricsURL(t, logs, exited, &waitErr)
	scrape := func() string {
		resp, err := http.Get(metricsURL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	// Each new file is one more request; keep writing until every series
	// the expressions need is there, or give up and report what is not.
	var (
		missing map[string][]string
		unmet   []string
	)
	deadline := time.Now().Add(90 * time.Second)
	for n := 0; ; n++ {
		got := parseScrape(scrape())
		unmet = scenarioUnmet(got)
		missing = map[string][]string{}
		for where, e := range exprs {
			r, err := parsePromQL(e)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if m := checkRefs(r, got); len(m) > 0 {
				missing[where] = m
			}
		}
		if len(missing)+len(unmet) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-exited:
			t.Fatalf("kvsync run exited: %v", waitErr)
		default:
		}
		write(fmt.Sprintf("page-%03d.html", n), fmt.Sprintf("<p>page %d</p>", n))
		time.Sleep(150 * time.Millisecond)
	}
	for _, u := range unmet {
		t.Errorf("the scenario did not make %s count", u)
	}
	for _, n := range electionOffUnexpected(parseScrape(scrape())) {
		t.Errorf("%s is in the scrape of a run without leader_election: electionOnly must not list it", n)
	}
	wheres := make([]string, 0, len(missing))
	for w := range missing {
		wheres = append(wheres, w)
	}
	sort.Strings(wheres)
	for _, w := range wheres {
		t.Errorf("%s: the scrape lacks %s", w, strings.Join(missing[w], "; "))
	}
}

// TestElectionOnlyMetricsAreKvsyncs: each electionOnly name is one kvsync
// registers (a Go string literal in its non-test source, as every kvsync
// metric's full name is), and a run with election off exports none of them
// (checked on TestMetricNamesInScrape's scrape by electionOffUnexpected).
func TestElectionOnlyMetricsAreKvsyncs(t *testing.T) {
	found := map[string]string{}
	err := filepath.WalkDir("..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "deploy", "testdata", ".git":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for name := range electionOnly {
			if strings.Contains(string(b), strconv.Quote(name)) {
				found[name] = p
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range slices.Sorted(maps.Keys(electionOnly)) {
		if found[name] == "" {
			t.Errorf("no non-test Go file of kvsync registers %q (electionOnly names it)", name)
		}
	}
}

// electionOffUnexpected lists electionOnly metrics a scrape of a run with
// election off holds: either the name is registered regardless (take it
// out of electionOnly) or election was on.
func electionOffUnexpected(got []series) []string {
	var out []string
	for _, s := range got {
		if _, ok := electionOnly[s.name]; ok && !slices.Contains(out, s.name) {
			out = append(out, s.name)
		}
	}
	return out
}

// scenarioUnmet lists what the scenario is there to cause and has not yet
// counted. Most series exist from the start at 0, so without this the names
// could be found in a scrape of a daemon that never met an error.
func scenarioUnmet(got []series) []string {
	var unmet []string
	for _, want := range []struct {
		name   string
		labels map[string]string
	}{
		{"kvsync_files_skipped_total", map[string]string{"reason": "bad_metadata"}},
		{"kvsync_api_errors_total", map[string]string{"cf_code": "971"}},
		{"kvsync_api_errors_total", map[string]string{"cf_code": "10001"}},
		{"kvsync_api_requests_total", map[string]string{"code": "429"}},
		{"kvsync_rate_limit_pauses_total", nil},
	} {
		if !slices.ContainsFunc(got, func(s series) bool {
			for k, v := range want.labels {
				if s.labels[k] != v {
					return false
				}
			}
			return s.name == want.name && s.value > 0
		}) {
			unmet = append(unmet, fmt.Sprintf("%s%v", want.name, want.labels))
		}
	}
	return unmet
}

var metricsServingRE = regexp.MustCompile(`msg="metrics serving" addr=(\S+)`)

func waitMetricsURL(t *testing.T, logs *testkit.Buffer, exited <-chan struct{}, waitErr *error) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := metricsServingRE.FindStringSubmatch(logs.String()); m != nil {
			return "http://" + m[1] + "/metrics"
		}
		select {
		case <-exited:
			t.Fatalf("kvsync run exited before serving metrics: %v\n%s", *waitErr, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("kvsync run did not serve metrics within 30s\n%s", logs.String())
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
