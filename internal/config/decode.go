package config

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Load reads the config file at path, decodes it strictly, fills defaults
// (StateDir from the process's environment) and validates it. Relative paths
// in the file resolve against the file's directory.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config file: %w", err)
	}
	return Parse(data, path)
}

// Parse is Load for bytes already read. name is the file's path: it prefixes
// error messages and its directory is the base for relative paths (the
// working directory when name has none).
func Parse(data []byte, name string) (Config, error) {
	c, err := parseFile(data, name)
	if err != nil {
		return c, err
	}
	c.fillDefaults(os.Getenv, os.Geteuid())
	return c, c.Validate()
}

// parseFile decodes a file over the environment-free defaults, recording
// where each value was set. It does not validate.
func parseFile(data []byte, name string) (Config, error) {
	c := baseDefaults()
	c.src = newSources()
	d := &decoder{file: name, src: c.src}

	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		// An empty file: Validate reports what is missing.
		c.src.set("", Source{File: name, Line: 1})
		return c, nil
	case err != nil:
		return c, syntaxError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return c, syntaxError(name, err)
		}
		return c, &FieldError{Source: Source{File: name, Line: extra.Line}, Msg: "a second YAML document; the config is one document", Kind: ErrSyntax}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	c.src.set("", Source{File: name, Line: root.Line})
	d.value(root, "", reflect.ValueOf(&c).Elem())
	if len(d.errs) > 0 {
		return c, errors.Join(d.errs...)
	}

	base, err := filepath.Abs(filepath.Dir(name))
	if err != nil {
		return c, fmt.Errorf("config file %s: %w", name, err)
	}
	resolve := func(p *string, path string) {
		if c.src.has(path) {
			*p = resolvePath(base, *p)
		}
	}
	resolve(&c.StateDir, "state_dir")
	resolve(&c.API.TokenFile, "api.token_file")
	resolve(&c.API.CAFile, "api.ca_file")
	for i := range c.Syncs {
		resolve(&c.Syncs[i].Dir, indexPath("syncs", i)+".dir")
	}
	return c, nil
}

// resolvePath makes p absolute against base. "~" paths are left alone for
// Validate to reject, and "" stays "" (unset).
func resolvePath(base, p string) string {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "~") {
		return p
	}
	return filepath.Join(base, p)
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns yaml.v3's "yaml: line 3: msg" into "file:3: msg".
func syntaxError(name string, err error) error {
	if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FieldError{Source: Source{File: name, Line: line}, Msg: m[2], Kind: ErrSyntax}
	}
	return &FieldError{Source: Source{File: name}, Msg: strings.TrimPrefix(err.Error(), "yaml: "), Kind: ErrSyntax}
}

// decoder walks a yaml.Node tree into the Config types by their yaml tags,
// rejecting unknown and repeated keys and recording each key's line.
//
// It is hand-written, rather than yaml.v3's Decode with KnownFields, because
// it is what lets a config error name the file, the line and the field's
// path (syncs[1].expiration[0].ttl), list the field names valid where an
// unknown one was found, report every problem of the file at once instead
// of the first, and tell Validate which values the file set (a default is
// not "set on line N"). yaml.v3 reports unknown fields one at a time,
// without the valid names, and values not at all by line.
type decoder struct {
	file string
	src  *sources
	errs []error
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	timeType     = reflect.TypeOf(time.Time{})
	syncType     = reflect.TypeOf(Sync{})
)

func (d *decoder) fail(n *yaml.Node, path string, kind error, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{
		Source: Source{File: d.file, Line: n.Line},
		Field:  path,
		Msg:    fmt.Sprintf(format, args...),
		Kind:   kind,
	})
}

// value decodes n into v. A null leaves v as it is (its default).
func (d *decoder) value(n *yaml.Node, path string, v reflect.Value) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return
	}
	switch v.Type() {
	case durationType:
		if dur, ok := d.duration(n, path); ok {
			v.SetInt(int64(dur))
		}
		return
	case timeType:
		if t, ok := d.time(n, path); ok {
			v.Set(reflect.ValueOf(t))
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		if s, ok := d.str(n, path); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			d.fail(n, path, ErrInvalid, "want true or false, not %s", describe(n))
			return
		}
		var b bool
		if err := n.Decode(&b); err != nil {
			d.fail(n, path, ErrInvalid, "want true or false, not %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.fail(n, path, ErrInvalid, "want an integer, not %s", describe(n))
			return
		}
		var i int
		if err := n.Decode(&i); err != nil {
			d.fail(n, path, ErrInvalid, "want an integer, not %s", describe(n))
			return
		}
		v.SetInt(int64(i))
	case reflect.Int64:
		if size, ok := d.size(n, path); ok {
			v.SetInt(size)
		}
	case reflect.Float64:
		var f float64
		tag := n.ShortTag()
		if n.Kind != yaml.ScalarNode || (tag != "!!float" && tag != "!!int") || n.Decode(&f) != nil {
			d.fail(n, path, ErrInvalid, "want a number, not %s", describe(n))
			return
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(n, path, ErrInvalid, "want a finite number, not %s", n.Value)
			return
		}
		v.SetFloat(f)
	case reflect.Slice:
		d.sequence(n, path, v)
	case reflect.Struct:
		d.mapping(n, path, v)
	default:
		panic(fmt.Sprintf("config: no decoder for %s at %s", v.Type(), path))
	}
}

func (d *decoder) sequence(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, ErrInvalid, "want a list, not %s", describe(n))
		return
	}
	out := reflect.MakeSlice(v.Type(), 0, len(n.Content))
	for i, item := range n.Content {
		ip := indexPath(path, i)
		d.src.set(ip, Source{File: d.file, Line: item.Line})
		elem := reflect.New(v.Type().Elem()).Elem()
		if elem.Type() == syncType {
			// Each sync starts from the defaults; an absent key keeps them.
			elem.Set(reflect.ValueOf(DefaultSync()))
		}
		d.value(item, ip, elem)
		out = reflect.Append(out, elem)
	}
	v.Set(out)
}

func (d *decoder) mapping(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, ErrInvalid, "want a mapping of %s, not %s", strings.Join(fieldNames(v.Type()), ", "), describe(n))
		return
	}
	fields := fieldIndex(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, ErrInvalid, "a key must be a plain name, not %s", describe(k))
			continue
		}
		fp := joinPath(path, k.Value)
		if k.Value == "<<" {
			d.fail(k, fp, ErrUnknownField, "YAML merge keys are not supported; repeat the fields or use an alias (*name) for a whole value")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(k, fp, ErrConflict, "set twice (first on line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := fields[k.Value]
		if !ok {
			d.fail(k, fp, ErrUnknownField, "unknown field; valid here: %s", strings.Join(fieldNames(v.Type()), ", "))
			continue
		}
		d.src.set(fp, Source{File: d.file, Line: k.Line})
		d.value(val, fp, v.Field(idx))
	}
}

// str accepts any scalar and keeps its text as written, so that an all-digit
// namespace id is not reformatted as a number.
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!binary" {
		d.fail(n, path, ErrInvalid, "want a string, not %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (d *decoder) duration(n *yaml.Node, path string) (time.Duration, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, ErrInvalid, "want a duration such as 90s, 15m, 1h or 7d, not %s", describe(n))
		return 0, false
	}
	if n.ShortTag() == "!!int" && n.Value != "0" {
		d.fail(n, path, ErrInvalid, "%s has no unit; write %ss, %sm, %sh or %sd", n.Value, n.Value, n.Value, n.Value, n.Value)
		return 0, false
	}
	dur, err := ParseDuration(n.Value)
	if err != nil {
		d.fail(n, path, ErrInvalid, "%v", err)
		return 0, false
	}
	return dur, true
}

func (d *decoder) time(n *yaml.Node, path string) (time.Time, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, ErrInvalid, "want an RFC 3339 time such as 2030-01-01T00:00:00Z, not %s", describe(n))
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, n.Value)
	if err != nil {
		d.fail(n, path, ErrInvalid, "%q is not an RFC 3339 time such as 2030-01-01T00:00:00Z", n.Value)
		return time.Time{}, false
	}
	// The zone carries no meaning for an expiration instant; UTC makes equal
	// instants compare equal with == and reflect.DeepEqual.
	return t.UTC(), true
}

func (d *decoder) size(n *yaml.Node, path string) (int64, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, ErrInvalid, "want a size such as 1048576, 512KiB or 1MiB, not %s", describe(n))
		return 0, false
	}
	if n.ShortTag() == "!!int" {
		// Plain bytes, in any integer form YAML accepts (1_048_576, 0x100000).
		var i int64
		if err := n.Decode(&i); err != nil {
			d.fail(n, path, ErrInvalid, "%s is not a size in bytes", n.Value)
			return 0, false
		}
		return i, true
	}
	s, err := ParseSize(n.Value)
	if err != nil {
		d.fail(n, path, ErrInvalid, "%v", err)
		return 0, false
	}
	return s, true
}

// describe names what a node is, for "want X, not Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	switch n.ShortTag() {
	case "!!str":
		return strconv.Quote(n.Value)
	case "!!binary":
		return "binary data"
	}
	return n.Value
}

// fieldIndex maps the yaml names of t's fields to their indexes.
func fieldIndex(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			m[name] = i
		}
	}
	return m
}

func fieldNames(t reflect.Type) []string {
	var names []string
	for name := range fieldIndex(t) {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

var daysRe = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)d(.*)$`)

// ParseDuration is time.ParseDuration plus a leading day count ("7d",
// "1d12h", "1.5d"), since expirations are naturally written in days and Go
// has no "d" unit. A day is 24 h. "0" is zero; other unitless numbers are
// errors, as with time.ParseDuration.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	neg := strings.HasPrefix(s, "-")
	body := strings.TrimLeft(s, "+-")
	m := daysRe.FindStringSubmatch(body)
	if m == nil {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 90s, 15m, 1h30m or 7d", s)
		}
		return d, nil
	}
	days, err := strconv.ParseFloat(m[1], 64)
	if err != nil || days*24 > float64(math.MaxInt64)/float64(time.Hour) {
		return 0, fmt.Errorf("%q is not a duration such as 90s, 15m, 1h30m or 7d", s)
	}
	d := time.Duration(days * 24 * float64(time.Hour))
	if m[2] != "" {
		if strings.ContainsAny(m[2][:1], "+-") {
			return 0, fmt.Errorf("%q is not a duration such as 90s, 15m, 1h30m or 7d", s)
		}
		rest, err := time.ParseDuration(m[2])
		if err != nil || rest > math.MaxInt64-d {
			return 0, fmt.Errorf("%q is not a duration such as 90s, 15m, 1h30m or 7d", s)
		}
		d += rest
	}
	if neg {
		d = -d
	}
	return d, nil
}

// formatDuration prints whole days as "7d" and anything else as Go does.
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d != 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	return d.String()
}
