package main

import (
	"bufio"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/metrics"
	"github.com/kvsync/kvsync/uploader"
)

// The docs test: what the READMEs and the example configs tell a user to
// type is what the binary takes. Everything it checks against comes from
// the binary or the code, never from a list kept here: subcommands and
// their flags from `kvsync --help` and `kvsync <command> -h`, config fields
// from internal/config's yaml tags, environment variables from the calls of
// the packages linked into the binary that read one.
//
// The docs may say three things to this test, in an HTML comment (in YAML, a
// comment line) of the form "docs-test: ...":
//   - "docs-test: skip: <why>" right before a ```sh block of README.md:
//     the block is not run (it needs root, systemd, docker, a release...);
//   - "docs-test: daemon" right before one: it runs until interrupted; the
//     test runs it, follows what it prints and stops it with Ctrl-C (SIGINT);
//   - "docs-test: foreign <name>... (<why>)": names that look like
//     kvsync's but are another tool's (a docker flag, a sysctl), so they
//     are not checked. Each must appear in the doc.

const repoRoot = "../.."

// docFiles are the documents checked: every README a user follows and the
// example configs, whose comments name fields and flags.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(repoRoot, "README.md"), filepath.Join(repoRoot, "bench", "README.md")}
	for _, g := range []string{"deploy/*/README.md", "configs/*.yaml", "deploy/*/kvsync.yaml"} {
		m, err := filepath.Glob(filepath.Join(repoRoot, g))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	return files
}

// doc is one document cut into what the test reads.
type doc struct {
	name string
	// blocks are the fenced code blocks (Markdown) or the whole file
	// (YAML); prose is the text outside them (in YAML, the comments);
	// spans are the prose's inline code (in YAML, also a comment's
	// indented example lines); foreign the names the doc declares
	// another tool's.
	blocks  []codeBlock
	spans   []string
	prose   string
	foreign map[string]bool
}

type codeBlock struct {
	lang, body string
	line       int
	marker     string // the "docs-test:" comment right before it, without that prefix
}

var (
	markerRE = regexp.MustCompile(`docs-test:\s*([^>\n]*?)\s*(?:-->|$)`)
	spanRE   = regexp.MustCompile("`([^`\n]+)`")
	fenceRE  = regexp.MustCompile("^\\s*```\\s*([a-z]*)")
)

func readDoc(t *testing.T, file string) doc {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(repoRoot, file)
	d := doc{name: filepath.ToSlash(rel), foreign: map[string]bool{}}
	text := string(b)
	for _, m := range markerRE.FindAllStringSubmatch(text, -1) {
		if rest, ok := strings.CutPrefix(m[1], "foreign "); ok {
			rest, _, _ = strings.Cut(rest, " (") // the reason
			for _, n := range strings.Fields(rest) {
				d.foreign[n] = true
			}
		}
	}
	if strings.HasSuffix(file, ".yaml") {
		// The YAML itself is a config; its comments are its prose, and
		// they name fields and flags bare, without backticks.
		var comments []string
		for _, l := range strings.Split(text, "\n") {
			if i := strings.Index(l, "#"); i >= 0 && (i == 0 || l[i-1] == ' ') {
				comments = append(comments, l[i+1:])
			}
		}
		d.prose = strings.Join(comments, "\n")
		d.blocks = []codeBlock{{lang: "yaml", body: text, line: 1}}
		// Code in a comment: in backticks, or indented as an example.
		for _, m := range spanRE.FindAllStringSubmatch(d.prose, -1) {
			d.spans = append(d.spans, m[1])
		}
		for _, l := range comments {
			if strings.HasPrefix(l, "   ") {
				d.spans = append(d.spans, strings.TrimSpace(l))
			}
		}
		return d
	}
	var prose strings.Builder
	lines := strings.Split(text, "\n")
	lastNonBlank := ""
	for i := 0; i < len(lines); i++ {
		m := fenceRE.FindStringSubmatch(lines[i])
		if m == nil {
			prose.WriteString(lines[i] + "\n")
			if strings.TrimSpace(lines[i]) != "" {
				lastNonBlank = lines[i]
			}
			continue
		}
		blk := codeBlock{lang: m[1], line: i + 1}
		if mm := markerRE.FindStringSubmatch(lastNonBlank); mm != nil {
			blk.marker = mm[1]
		}
		var body []string
		for i++; i < len(lines) && !fenceRE.MatchString(lines[i]); i++ {
			body = append(body, lines[i])
		}
		blk.body = strings.Join(body, "\n")
		d.blocks = append(d.blocks, blk)
		lastNonBlank = ""
	}
	d.prose = prose.String()
	for _, m := range spanRE.FindAllStringSubmatch(d.prose, -1) {
		d.spans = append(d.spans, m[1])
	}
	return d
}

// binarySurface is what the binary says it takes.
type binarySurface struct {
	commands map[string]map[string]bool // subcommand -> its flags
	fields   map[string]bool            // config paths: "api.token_file", "syncs.dir", ...
	sections map[string]bool            // fields that hold fields: "api", "syncs", ...
	env      map[string]bool            // environment variables the code reads
	labels   map[string]bool            // metric label names and values
}

var (
	commandLineRE = regexp.MustCompile(`^  ([a-z][a-z0-9-]*)\s{2,}\S`)
	flagLineRE    = regexp.MustCompile(`^\s+--?[a-zA-Z0-9]`)
	flagNameRE    = regexp.MustCompile(`(?:^|[\s,])--?([a-zA-Z0-9][a-zA-Z0-9-]*)`)
)

func kvsyncOutput(args ...string) (string, int) {
	cmd := exec.Command(kvsyncBin, args...)
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return string(out), code
}

func surfaceOf(t *testing.T) binarySurface {
	t.Helper()
	s := binarySurface{commands: map[string]map[string]bool{}, fields: map[string]bool{}, sections: map[string]bool{}}
	help, code := kvsyncOutput("--help")
	if code != 0 {
		t.Fatalf("kvsync --help: exit %d", code)
	}
	_, cmds, ok := strings.Cut(help, "Commands:")
	if !ok {
		t.Fatalf("kvsync --help lists no \"Commands:\":\n%s", help)
	}
	for _, l := range strings.Split(cmds, "\n") {
		m := commandLineRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		out, code := kvsyncOutput(m[1], "-h")
		if code != 0 {
			t.Fatalf("kvsync %s -h: exit %d\n%s", m[1], code, out)
		}
		// -h and --help are what printed this; every command takes them.
		flags := map[string]bool{"h": true, "help": true}
		for _, fl := range strings.Split(out, "\n") {
			// "  -name type", or "  -n, --name type": the names come before
			// the usage, which follows a tab or two spaces.
			if !flagLineRE.MatchString(fl) {
				continue
			}
			head := strings.TrimSpace(fl)
			if i := strings.IndexAny(head, "\t"); i >= 0 {
				head = head[:i]
			}
			head, _, _ = strings.Cut(head, "  ")
			for _, fm := range flagNameRE.FindAllStringSubmatch(head, -1) {
				flags[fm[1]] = true
			}
		}
		s.commands[m[1]] = flags
	}
	if len(s.commands) < 3 {
		t.Fatalf("read %d commands from kvsync --help: its format changed and this test no longer reads it\n%s", len(s.commands), help)
	}
	if _, code := kvsyncOutput("help"); code == 0 {
		s.commands["help"] = map[string]bool{}
	}
	s.walkFields(reflect.TypeFor[config.Config](), "")
	s.env = envReadByBinary(t)
	s.labels = metricLabels(t)
	return s
}

// metricLabels are the label names of kvsync's metrics and the values of
// those a sync's series start at zero: prose names them in snake_case like fields.
func metricLabels(t *testing.T) map[string]bool {
	t.Helper()
	reg := &describingRegistry{Registry: prometheus.NewRegistry()}
	// A sync's series start at zero with every value of their labels.
	metrics.New(reg, "test").Sync("docs")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetName()], labels[l.GetValue()] = true, true
			}
		}
	}
	// A vector with no series yet shows its label names only in its Desc.
	ch := make(chan *prometheus.Desc)
	go func() {
		for _, c := range reg.collectors {
			c.Describe(ch)
		}
		close(ch)
	}()
	for d := range ch {
		if m := regexp.MustCompile(`variableLabels: \{([^}]*)\}`).FindStringSubmatch(d.String()); m != nil {
			for _, n := range strings.Split(m[1], ",") {
				labels[strings.TrimSpace(n)] = true
			}
		}
	}
	return labels
}

// describingRegistry keeps what is registered, to describe it.
type describingRegistry struct {
	*prometheus.Registry
	collectors []prometheus.Collector
}

func (r *describingRegistry) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registry.Register(c)
}

func (r *describingRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// walkFields records the yaml paths of a config type: a field whose type
// (or element type, for a list) is a struct with yaml fields is a section.
func (s *binarySurface) walkFields(typ reflect.Type, prefix string) {
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		p := prefix + name
		s.fields[p] = true
		et := f.Type
		for et.Kind() == reflect.Slice || et.Kind() == reflect.Pointer {
			et = et.Elem()
		}
		if et.Kind() == reflect.Struct && hasYAMLFields(et) {
			s.sections[name] = true
			s.walkFields(et, p+".")
		}
	}
}

func hasYAMLFields(typ reflect.Type) bool {
	for i := 0; i < typ.NumField(); i++ {
		if n, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ","); n != "" && n != "-" {
			return true
		}
	}
	return false
}

// field reports whether a dotted path names a config field: "api.rate",
// or "expiration.ttl" under syncs, each step a field of the one before.
func (s *binarySurface) field(p string) bool {
	if s.fields[p] {
		return true
	}
	for f := range s.fields {
		if strings.HasSuffix(f, "."+p) {
			return true
		}
	}
	return false
}

// envReadByBinary finds, in the Go files linked into kvsync (its own
// packages and its dependencies outside the standard library), every call
// of a function named getenv, Getenv or LookupEnv (os's, or one passed in)
// with a string constant, and in the repository's shell scripts every
// variable given a default (${NAME:-...}): the environment kvsync and its
// scripts read.
func envReadByBinary(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	fset := token.NewFileSet()
	var files []*ast.File
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fs := strings.Fields(l)
		for _, name := range fs[1:] {
			f, err := parser.ParseFile(fset, filepath.Join(fs[0], name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
	}
	consts := map[string]string{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						consts[name.Name], _ = strconv.Unquote(lit.Value)
					}
				}
			}
			return true
		})
	}
	env := map[string]bool{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			var fn string
			switch e := call.Fun.(type) {
			case *ast.Ident:
				fn = e.Name
			case *ast.SelectorExpr:
				fn = e.Sel.Name
			}
			if !slices.Contains([]string{"getenv", "Getenv", "LookupEnv"}, fn) {
				return true
			}
			switch a := call.Args[0].(type) {
			case *ast.BasicLit:
				if v, err := strconv.Unquote(a.Value); err == nil {
					env[v] = true
				}
			case *ast.Ident:
				if v, ok := consts[a.Name]; ok {
					env[v] = true
				}
			case *ast.SelectorExpr:
				if v, ok := consts[a.Sel.Name]; ok {
					env[v] = true
				}
			}
			return true
		})
	}
	scripts, err := filepath.Glob(filepath.Join(repoRoot, "*", "*", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(repoRoot, "*", "*.sh"))
	for _, sc := range append(scripts, more...) {
		b, err := os.ReadFile(sc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range scriptEnvRE.FindAllStringSubmatch(string(b), -1) {
			env[m[1]] = true
		}
	}
	if len(env) < 5 {
		t.Fatalf("found %d environment variables read by the code: the test no longer finds how it reads them", len(env))
	}
	return env
}

// shellWords splits a command line roughly as sh does: quotes group words
// and are removed; $(...) stays one word.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	in := false
	var quote rune
	depth := 0
	for _, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
				continue
			}
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == '(':
			depth++
			cur.WriteRune(r)
			in = true
		case r == ')':
			depth--
			cur.WriteRune(r)
		case (r == ' ' || r == '\t') && depth <= 0:
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

// shellOps end a command's words.
var shellOps = map[string]bool{"&&": true, "||": true, ";": true, "|": true, "&": true, ">": true, "2>": true, "<": true}

// commandPosition: words after which the next one is a command.
var commandPrefix = map[string]bool{"sudo": true, "exec": true, "env": true, "time": true, "nohup": true}

// isKvsync tells a word that runs the binary: kvsync, or a path ending in it.
func isKvsync(w string) bool {
	w = strings.TrimSuffix(w, ";")
	return path.Base(w) == "kvsync" && !strings.ContainsAny(w, "@:")
}

// kvsyncCalls finds the invocations of kvsync on a command line and
// returns each one's words after the binary, up to a shell operator.
func kvsyncCalls(line string) [][]string {
	if i := strings.Index(line, " #"); i >= 0 {
		line = line[:i]
	}
	words := shellWords(line)
	var calls [][]string
	cmdPos := true
	for i := 0; i < len(words); i++ {
		w := words[i]
		if shellOps[w] || strings.HasSuffix(w, ";") {
			cmdPos = true
			continue
		}
		if isKvsync(w) {
			var args []string
			for _, a := range words[i+1:] {
				if shellOps[a] || strings.HasPrefix(a, "#") {
					break
				}
				args = append(args, strings.TrimSuffix(a, ";"))
			}
			// A kvsync word out of command position (an image or a
			// container named kvsync) runs the binary only when a command
			// follows: `docker run ... kvsync sync --dir /data`.
			if cmdPos || len(args) > 0 && regexp.MustCompile(`^[a-z]+$`).MatchString(args[0]) {
				calls = append(calls, args)
			}
		}
		cmdPos = commandPrefix[w]
	}
	return calls
}

// joinContinued joins lines ending in a backslash.
func joinContinued(body string) []string {
	var out []string
	var cur string
	for _, l := range strings.Split(body, "\n") {
		if s, ok := strings.CutSuffix(strings.TrimRight(l, " "), "\\"); ok {
			cur += s + " "
			continue
		}
		out = append(out, cur+l)
		cur = ""
	}
	return out
}

var (
	lowerWordRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	flagRE      = regexp.MustCompile(`^--?([a-zA-Z0-9][a-zA-Z0-9-]*)(=.*)?$`)
	// A config field as prose names it: snake_case or dotted, maybe with
	// a value ("record_in_metadata: false").
	fieldSpanRE = regexp.MustCompile(`^([a-z][a-z0-9]*(?:[._][a-z0-9]+)+|[a-z]+)(?::(?: .*)?)?$`)
	// kvsync's own environment: what it reads is named CLOUDFLARE_* (as
	// wrangler's) or KVSYNC_*.
	ownEnvRE = regexp.MustCompile(`\b((?:CLOUDFLARE|KVSYNC)_[A-Z0-9_]+)\b`)
	// $NAME or ${NAME} in prose: named as an environment variable.
	dollarEnvRE = regexp.MustCompile(`\$\{?([A-Z][A-Z0-9_]+)\b`)
	// A bare word that is a field name in a YAML comment.
	commentFieldRE = regexp.MustCompile(`(?:^|[\s(,])((?:[a-z]+\.)?[a-z]+(?:_[a-z0-9]+)+)\b`)
	// A shell script's variable with a default: an input from the environment.
	scriptEnvRE   = regexp.MustCompile(`\$\{([A-Z][A-Z0-9_]*):?[-=]`)
	commentFlagRE = regexp.MustCompile(`(?:^|[\s(,])(--[a-z][a-z0-9-]+)\b`)
)

// TestDocsMatchTheBinary: every command, flag, config field and environment
// variable the docs name is one the binary has. Any drift fails it.
func TestDocsMatchTheBinary(t *testing.T) {
	s := surfaceOf(t)
	allFlags := map[string]bool{}
	for _, fl := range s.commands {
		for f := range fl {
			allFlags[f] = true
		}
	}
	checked := map[string]int{}
	for _, file := range docFiles(t) {
		d := readDoc(t, file)
		errorf := func(format string, args ...any) {
			t.Helper()
			t.Errorf("%s: "+format, append([]any{d.name}, args...)...)
		}
		for n := range d.foreign {
			if !strings.Contains(d.prose, n) && !slices.ContainsFunc(d.blocks, func(b codeBlock) bool { return strings.Contains(b.body, n) }) {
				errorf("declares %s foreign but never names it: drop it from the docs-test comment", n)
			}
		}
		// Command lines: in code blocks and inline code.
		var lines []string
		for _, b := range d.blocks {
			if b.lang == "json" || b.lang == "js" || strings.HasSuffix(d.name, ".yaml") {
				continue
			}
			lines = append(lines, joinContinued(b.body)...)
		}
		lines = append(lines, d.spans...)
		for _, l := range lines {
			// A YAML list item or a quoted CI step runs a command too.
			l = strings.TrimPrefix(strings.TrimSpace(l), "- ")
			l = strings.TrimPrefix(l, "run: ")
			for _, args := range kvsyncCalls(l) {
				checked["command"]++
				s.checkCall(args, l, allFlags, d, errorf)
			}
		}
		// Flags, fields and variables named alone in prose.
		for _, sp := range d.spans {
			sp = strings.TrimSpace(sp)
			if sp == "" {
				continue
			}
			if m := flagRE.FindStringSubmatch(strings.Fields(sp + " ")[0]); m != nil && strings.HasPrefix(sp, "--") {
				if !d.foreign[strings.Fields(sp)[0]] && !allFlags[m[1]] {
					errorf("names the flag %s, which no kvsync command takes", strings.Fields(sp)[0])
				}
				checked["flag"]++
				continue
			}
			if strings.HasSuffix(d.name, ".md") {
				s.checkFieldSpan(sp, d, errorf, checked)
			}
		}
		if strings.HasSuffix(d.name, ".yaml") {
			for _, m := range commentFieldRE.FindAllStringSubmatch(d.prose, -1) {
				name := m[1]
				if d.foreign[name] || strings.HasPrefix(name, "kvsync_") {
					continue
				}
				checked["field"]++
				if !s.field(name) {
					errorf("a comment names %s, which is not a config field", name)
				}
			}
			for _, m := range commentFlagRE.FindAllStringSubmatch(d.prose, -1) {
				checked["flag"]++
				if !d.foreign[m[1]] && !allFlags[strings.TrimLeft(m[1], "-")] {
					errorf("a comment names the flag %s, which no kvsync command takes", m[1])
				}
			}
			s.checkConfigYAML(d.blocks[0].body, 0, errorf, checked)
		}
		// kvsync configs shown in the docs: every key a field.
		for _, b := range d.blocks {
			if b.lang == "yaml" && strings.HasSuffix(d.name, ".md") && regexp.MustCompile(`(?m)^syncs:`).MatchString(b.body) {
				s.checkConfigYAML(b.body, b.line, errorf, checked)
			}
		}
		// Environment variables: kvsync's names anywhere; any $NAME in prose.
		names := map[string]bool{}
		for _, m := range ownEnvRE.FindAllStringSubmatch(d.prose, -1) {
			names[m[1]] = true
		}
		for _, b := range d.blocks {
			for _, m := range ownEnvRE.FindAllStringSubmatch(b.body, -1) {
				names[m[1]] = true
			}
		}
		for _, sp := range d.spans {
			for _, m := range dollarEnvRE.FindAllStringSubmatch(sp, -1) {
				names[m[1]] = true
			}
		}
		for n := range names {
			checked["env"]++
			if !d.foreign[n] && !s.env[n] {
				errorf("names the environment variable %s, which kvsync does not read", n)
			}
		}
	}
	// A test that checks nothing passes on any drift.
	for _, what := range []string{"command", "flag", "field", "env"} {
		if checked[what] < 5 {
			t.Errorf("checked only %d %s names: the docs' format changed and this test no longer reads them", checked[what], what)
		}
	}
	t.Logf("checked %v", checked)
}

func (s *binarySurface) checkCall(args []string, line string, allFlags map[string]bool, d doc, errorf func(string, ...any)) {
	if len(args) == 0 {
		return
	}
	if strings.HasPrefix(args[0], "-") {
		// kvsync --help, kvsync --version: the binary must answer it.
		if _, code := kvsyncOutput(args[0]); code != 0 {
			errorf("`kvsync %s` exits %d (in %q)", args[0], code, line)
		}
		return
	}
	if !lowerWordRE.MatchString(args[0]) {
		return // "kvsync ..." with a placeholder
	}
	flags, ok := s.commands[args[0]]
	if !ok {
		errorf("runs `kvsync %s`, which is not a command (in %q)", args[0], line)
		return
	}
	if args[0] == "help" {
		if len(args) > 1 && lowerWordRE.MatchString(args[1]) && s.commands[args[1]] == nil {
			errorf("runs `kvsync help %s`, which is not a command (in %q)", args[1], line)
		}
		return
	}
	for _, a := range args[1:] {
		m := flagRE.FindStringSubmatch(a)
		if m == nil {
			continue
		}
		if !flags[m[1]] && !d.foreign["-"+m[1]] && !d.foreign["--"+m[1]] {
			errorf("runs `kvsync %s` with %s, which it does not take (in %q)", args[0], a, line)
		}
	}
}

// checkFieldSpan checks an inline code span that looks like a config field:
// a dotted path whose first step is a section, or a snake_case name, with
// or without a value.
func (s *binarySurface) checkFieldSpan(sp string, d doc, errorf func(string, ...any), checked map[string]int) {
	m := fieldSpanRE.FindStringSubmatch(sp)
	if m == nil || d.foreign[m[1]] || strings.HasPrefix(m[1], "kvsync_") {
		return
	}
	name := m[1]
	switch {
	case strings.Contains(name, "."):
		first, _, _ := strings.Cut(name, ".")
		if !s.sections[first] {
			return // a file name, a sysctl: not a config path
		}
	case strings.Contains(name, "_"):
		if s.labels[name] {
			return // a metric's label or label value
		}
	default:
		// A plain word ("delete: expire") is as likely another tool's
		// key ("replicas: 1"): not checked.
		return
	}
	checked["field"]++
	if !s.field(name) {
		errorf("names %s, which is not a config field", sp)
	}
}

// checkConfigYAML checks every key of a kvsync config against the fields.
func (s *binarySurface) checkConfigYAML(body string, line int, errorf func(string, ...any), checked map[string]int) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(body), &root); err != nil {
		errorf("a kvsync config that is not YAML: %v", err)
		return
	}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := prefix + n.Content[i].Value
				checked["field"]++
				if !s.fields[p] {
					errorf("line %d: %s is not a config field", line+n.Content[i].Line, p)
					continue
				}
				if s.sections[n.Content[i].Value] {
					walk(n.Content[i+1], p+".")
				}
			}
		}
	}
	walk(&root, "")
}

// TestReadmeShellExamplesRun runs README.md's shell blocks, except those
// marked "docs-test: skip", as a user would from a checkout, with kvsync
// on PATH (built by TestMain: `go run ./cmd/kvsync` is that binary, so
// it is run directly rather than built again) and Cloudflare's API played
// by the emulator, which the examples reach through
// $CLOUDFLARE_API_BASE_URL, a variable they document. State goes to a
// temporary $STATE_DIRECTORY.
func TestReadmeShellExamplesRun(t *testing.T) {
	d := readDoc(t, filepath.Join(repoRoot, "README.md"))
	em, err := emulator.New(emulator.Options{}) // any credentials, as without a token
	if err != nil {
		t.Fatal(err)
	}
	env := newKVEnvFrom(t, em)
	binDir := t.TempDir()
	if err := os.Symlink(kvsyncBin, filepath.Join(binDir, "kvsync")); err != nil {
		t.Fatal(err)
	}
	ran, skipped := 0, 0
	blocks := slices.Clone(d.blocks)
	// The prose's own commands to try from a checkout (`go run
	// ./cmd/kvsync sync --local ...`) run like a block; those a block
	// already holds (the daemon) are not run twice.
	for _, sp := range d.spans {
		if strings.HasPrefix(sp, "go run ./cmd/kvsync ") && !slices.ContainsFunc(d.blocks, func(b codeBlock) bool { return strings.TrimSpace(b.body) == sp }) {
			blocks = append(blocks, codeBlock{lang: "sh", body: sp})
		}
	}
	for _, b := range blocks {
		if b.lang != "sh" {
			continue
		}
		if reason, ok := strings.CutPrefix(b.marker, "skip:"); ok {
			if strings.TrimSpace(reason) == "" {
				t.Errorf("README.md:%d: a block skipped without a reason", b.line)
			}
			t.Logf("README.md:%d not run: %s", b.line, strings.TrimSpace(reason))
			skipped++
			continue
		}
		ran++
		name := fmt.Sprintf("line%d", b.line)
		if b.line == 0 {
			name = b.body
		}
		t.Run(name, func(t *testing.T) {
			work := t.TempDir()
			copyTree(t, filepath.Join(repoRoot, "examples"), filepath.Join(work, "examples"))
			// What "the site is built into ./public" leaves.
			for _, f := range []string{"index.html", "css/site.css"} {
				mustWrite(t, filepath.Join(work, "public", f), "built "+f)
			}
			script := strings.ReplaceAll(b.body, "go run ./cmd/kvsync", "kvsync")
			if b.marker == "daemon" {
				// One command, which the shell becomes: Ctrl-C reaches it
				// alone, as from an interactive shell that runs it as a job.
				if strings.Count(strings.TrimSpace(script), "\n") > 0 {
					t.Fatalf("README.md:%d: a daemon block must be one command", b.line)
				}
				script = "exec " + script
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "sh", "-euc", script)
			cmd.Dir = work
			cmd.Env = append(os.Environ(),
				"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"),
				"HOME="+work, "STATE_DIRECTORY="+filepath.Join(work, "state"),
				"CLOUDFLARE_API_BASE_URL="+env.srv.URL+"/client/v4",
				"ACCOUNT_ID="+testAccount, "NAMESPACE_ID="+testNamespace)
			// Its own process group, which Ctrl-C signals as a whole.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if b.marker == "daemon" {
				runDaemonExample(t, cmd, work)
				return
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("README.md:%d: %v\n%s\n--- the block\n%s", b.line, err, out, b.body)
			}
		})
	}
	if ran == 0 {
		t.Error("no shell block of README.md ran")
	}
	// More skipped than run: the examples have drifted away from what a
	// user can try on their machine, or the markers are used too freely.
	if skipped > 2*ran {
		t.Errorf("%d shell blocks skipped, %d run: keep the skipped ones few", skipped, ran)
	}
}

// runDaemonExample does what README says of its daemon example: it prints
// curl lines to list the keys; a file added to the tree is in the emulator
// within about a second; Ctrl-C stops it, cleanly. The emulator it starts
// listens where the example says; a port taken by something else fails the
// test in CI and skips it elsewhere.
func runDaemonExample(t *testing.T, cmd *exec.Cmd, work string) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to follow the example's curl line (Debian package curl)")
	}
	for _, addr := range []string{"127.0.0.1:8787", "127.0.0.1:9464"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if os.Getenv("CI") == "" {
				t.Skipf("%s is taken on this machine (%v); the example needs it", addr, err)
			}
			t.Fatalf("%s is taken (%v); the example needs it", addr, err)
		}
		l.Close()
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	listLine := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, l, ok := strings.Cut(sc.Text(), "list the keys: "); ok {
				listLine <- l
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	var list string
	select {
	case list = <-listLine:
	case err := <-exited:
		t.Fatalf("the example exited before printing its curl lines: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the example printed no curl line to list the keys within a minute")
	}
	curlKeys := func() string {
		out, err := exec.Command("sh", "-c", list+" -sS").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", list, err, out)
		}
		return string(out)
	}
	waitFor := func(key string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			out := curlKeys()
			if strings.Contains(out, `"name":"`+key+`"`) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not listed by the example's curl line:\n%s", key, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitFor("index.html")
	mustWrite(t, filepath.Join(work, "examples", "site", "added-by-the-docs-test.txt"), "edited")
	waitFor("added-by-the-docs-test.txt")
	// Ctrl-C: the terminal sends SIGINT to the foreground process group.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("Ctrl-C: %v\n%s", err, tail(logs.String(), 30))
		}
	case <-time.After(time.Minute):
		t.Fatal("Ctrl-C did not stop the example within a minute")
	}
}

// copyTree copies the regular files and directories under src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// goTestBenchRE is a `go test ... -bench <regexp> ... <package>` line.
var goTestBenchRE = regexp.MustCompile(`go test [^\n` + "`" + `]*?-bench (\S+)[^\n` + "`" + `]*? (\./[\w./-]*)`)

// TestDocsBenchRegexesSelectWhatTheyName: a -bench regexp in the docs that
// names one benchmark (FullSync10kx1KiB) selects that one only, not also
// the benchmarks whose names it begins (FullSync10kx1KiBBatches), whose
// profile would be mixed in; one that names a group (FullSync) is left
// alone. The benchmarks are read from the packages' test files.
func TestDocsBenchRegexesSelectWhatTheyName(t *testing.T) {
	seen := 0
	for _, file := range docFiles(t) {
		d := readDoc(t, file)
		text := d.prose
		for _, b := range d.blocks {
			text += "\n" + b.body
		}
		for _, m := range goTestBenchRE.FindAllStringSubmatch(text, -1) {
			seen++
			pattern := strings.Trim(m[1], `'"`)
			re, err := regexp.Compile(strings.Split(pattern, "/")[0])
			if err != nil {
				t.Errorf("%s: -bench %s: %v", d.name, m[1], err)
				continue
			}
			benches := benchmarksIn(t, filepath.Join(repoRoot, m[2]))
			if len(benches) == 0 {
				t.Errorf("%s: -bench %s: %s has no benchmark", d.name, m[1], m[2])
				continue
			}
			core := strings.TrimPrefix(strings.Trim(pattern, "^$"), "Benchmark")
			var matched []string
			for _, b := range benches {
				if re.MatchString(b) {
					matched = append(matched, b)
				}
			}
			if len(matched) == 0 {
				t.Errorf("%s: -bench %s selects no benchmark of %s", d.name, m[1], m[2])
			}
			if slices.Contains(benches, "Benchmark"+core) && len(matched) > 1 {
				t.Errorf("%s: -bench %s names Benchmark%s but also selects %v: anchor it, '^Benchmark%s$'", d.name, m[1], core, matched, core)
			}
		}
	}
	if seen < 3 {
		t.Fatalf("found %d go test -bench lines: the test no longer reads the docs", seen)
	}
}

// benchmarksIn lists the top-level benchmarks of the package in dir.
func benchmarksIn(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range af.Decls {
			if fd, ok := decl.(*ast.FuncDecl); ok && fd.Recv == nil && strings.HasPrefix(fd.Name.Name, "Benchmark") {
				names = append(names, fd.Name.Name)
			}
		}
	}
	return names
}

// bulkKeysRE is a sentence about bulk requests that gives their keys.
var bulkKeysRE = regexp.MustCompile(`(?i)\bbulk\b[^.;:]*?\b([\d,]+) keys\b`)

// TestDocsBulkSize: what the docs say a bulk write carries is what the
// engine sends (uploader.DefaultBulkMaxPairs).
func TestDocsBulkSize(t *testing.T) {
	want := strconv.Itoa(uploader.DefaultBulkMaxPairs)
	seen := 0
	for _, file := range docFiles(t) {
		d := readDoc(t, file)
		// Comments and wrapped lines read as one text.
		text := regexp.MustCompile(`\n\s*#?\s*`).ReplaceAllString(d.prose, " ")
		for _, m := range bulkKeysRE.FindAllStringSubmatch(text, -1) {
			seen++
			if strings.ReplaceAll(m[1], ",", "") != want {
				t.Errorf("%s: %q: kvsync's bulk writes carry %s keys", d.name, m[0], want)
			}
		}
	}
	if seen < 2 {
		t.Fatalf("found %d sentences on the keys of a bulk write: the test no longer reads the docs", seen)
	}
}

// TestDocsDetachedContainersOutwaitTheDrain: a `docker run -d` of the
// daemon gives Docker a stop timeout longer than kvsync's drain (the
// default of `kvsync run --drain-timeout`, read from its help): Docker's
// own 10 s would kill it mid-drain.
func TestDocsDetachedContainersOutwaitTheDrain(t *testing.T) {
	help, _ := kvsyncOutput("run", "-h")
	m := regexp.MustCompile(`-drain-timeout duration\n[^\n]*\(default (\S+)\)`).FindStringSubmatch(help)
	if m == nil {
		t.Fatalf("kvsync run -h gives no default for --drain-timeout:\n%s", help)
	}
	drain, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, file := range docFiles(t) {
		d := readDoc(t, file)
		for _, b := range d.blocks {
			for _, l := range joinContinued(b.body) {
				words := shellWords(l)
				if len(words) < 3 || words[1] != "run" || words[0] != "docker" && words[0] != "podman" || !slices.Contains(words, "-d") {
					continue
				}
				seen++
				i := slices.Index(words, "--stop-timeout")
				if i < 0 || i+1 >= len(words) {
					t.Errorf("%s:%d: %q has no --stop-timeout: Docker's 10 s cut kvsync's %s drain short", d.name, b.line, l, drain)
					continue
				}
				if n, err := strconv.Atoi(words[i+1]); err != nil || time.Duration(n)*time.Second <= drain {
					t.Errorf("%s:%d: --stop-timeout %s is not longer than kvsync's %s drain", d.name, b.line, words[i+1], drain)
				}
			}
		}
	}
	if seen < 2 {
		t.Fatalf("found %d detached docker runs: the test no longer reads the docs", seen)
	}
}
