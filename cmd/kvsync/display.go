package main

import (
	"errors"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// display makes a file name, key or message safe to print for a person. A
// name is any bytes but NUL and '/', so a file called "x\nwrite  FAKE" or
// one holding an escape sequence would otherwise forge a line of plan's
// output or restyle the terminal. Names made only of printable characters
// print as they are, since nearly all are; anything else is printed as a Go
// quoted string, which shows every byte and cannot be mistaken for an
// unquoted name. Machine formats escape on their own (slog's text handler
// quotes such values, JSON escapes them), so this is for fmt output only.
func display(s string) string {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 || !unicode.IsPrint(r) && r != ' ' {
			return strconv.Quote(s)
		}
		i += size
	}
	return s
}

// displayErr is display for an error's message, which often embeds a name.
// The errors of an errors.Join keep their one line each, also when the join
// is wrapped: those line breaks are kvsync's own, not a name's.
func displayErr(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if j, ok := joinedIn(err); ok {
		if i := strings.Index(msg, j.Error()); i >= 0 {
			errs := j.Unwrap()
			lines := make([]string, len(errs))
			for k, e := range errs {
				lines[k] = displayErr(e)
			}
			return display(msg[:i]) + strings.Join(lines, "\n") + display(msg[i+len(j.Error()):])
		}
	}
	return display(msg)
}

type joinError interface {
	error
	Unwrap() []error
}

// joinedIn finds, down err's chain of wrappers, an error that errors.Join
// made (or one that prints like it: its errors' messages, one per line).
func joinedIn(err error) (joinError, bool) {
	for ; err != nil; err = errors.Unwrap(err) {
		j, ok := err.(joinError)
		if !ok {
			continue
		}
		errs := j.Unwrap()
		parts := make([]string, len(errs))
		for i, e := range errs {
			parts[i] = e.Error()
		}
		return j, strings.Join(parts, "\n") == j.Error()
	}
	return nil, false
}
