package config

import (
	"errors"
	"fmt"
	"strings"
)

// Error classes; every *FieldError unwraps to one of them.
var (
	// ErrSyntax: the file is not well-formed YAML.
	ErrSyntax = errors.New("yaml syntax error")
	// ErrUnknownField: a key the schema does not have (often a typo).
	ErrUnknownField = errors.New("unknown field")
	// ErrRequired: a required value is missing.
	ErrRequired = errors.New("required value missing")
	// ErrInvalid: a value of the wrong type or out of range.
	ErrInvalid = errors.New("invalid value")
	// ErrConflict: values that contradict each other (a key set twice,
	// duplicate sync names, overlapping key ranges, a rate over budget).
	ErrConflict = errors.New("conflicting values")
	// ErrInsideTree: a file or directory of kvsync's own (the state
	// directory, a token or CA file, the config file) lies where a sync
	// would publish it.
	ErrInsideTree = errors.New("kvsync's own file inside a synced tree")
)

// Source is where a value came from. The zero Source means a default or a
// value set in code.
type Source struct {
	File string // config file, as named to Load/Parse
	Line int    // 1-based line in File
	Flag string // command-line flag, "--dir"
	Env  string // environment variable, "CLOUDFLARE_ACCOUNT_ID"
}

// String renders the source as "file:line", "--flag" or "$VAR".
func (s Source) String() string {
	switch {
	case s.Flag != "":
		return s.Flag
	case s.Env != "":
		return "$" + s.Env
	case s.File != "" && s.Line > 0:
		return fmt.Sprintf("%s:%d", s.File, s.Line)
	}
	return s.File
}

// FieldError is one problem with one configuration value.
type FieldError struct {
	Source Source
	// Field is the path of the value, "syncs[0].expiration[1].ttl"; empty
	// when the problem is with the source itself (a flag combination, a
	// YAML syntax error).
	Field string
	// Msg says what is wrong, without the location.
	Msg string
	// Kind is one of the Err* classes.
	Kind error
}

// Error renders "kvsync.yaml:12: syncs[0].expiration[1].ttl: 59s is under
// the 60 s minimum", or "--namespace-id is required with --dir".
func (e *FieldError) Error() string {
	var b strings.Builder
	if loc := e.Source.String(); loc != "" {
		b.WriteString(loc)
		if e.Field == "" && e.Source.Flag != "" {
			b.WriteString(" ")
		} else {
			b.WriteString(": ")
		}
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the error's class.
func (e *FieldError) Unwrap() error { return e.Kind }

// SourceOf returns where the value at the field path (such as "state_dir" or
// "syncs[0].dir") was set, and whether it was set at all. For a defaulted
// value it returns, as errors about it do, the source of the closest
// enclosing value that was set, and false.
func (c *Config) SourceOf(field string) (Source, bool) {
	return c.src.lookup(field), c.src.has(field)
}

// sources maps field paths to where their values were set.
type sources struct {
	m map[string]Source
}

func newSources() *sources { return &sources{m: map[string]Source{}} }

func (s *sources) set(path string, src Source) {
	s.m[path] = src
}

// has reports whether path itself (not a parent) has a recorded source.
func (s *sources) has(path string) bool {
	if s == nil {
		return false
	}
	_, ok := s.m[path]
	return ok
}

// lookup returns the source of path or, when the value was defaulted, of
// its closest parent that was set (the block it belongs in).
func (s *sources) lookup(path string) Source {
	if s == nil {
		return Source{}
	}
	for {
		if src, ok := s.m[path]; ok {
			return src
		}
		if path == "" {
			return Source{}
		}
		path = parentPath(path)
	}
}

// parentPath strips the last element: "a.b[2]" -> "a.b" -> "a" -> "".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(parent string, i int) string {
	return fmt.Sprintf("%s[%d]", parent, i)
}
