package main

import (
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
// The errors of errors.Join keep their one line each: those line breaks are
// kvsync's own, not a name's.
func displayErr(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		parts := make([]string, 0, len(errs))
		for _, e := range errs {
			parts = append(parts, e.Error())
		}
		if strings.Join(parts, "\n") == msg {
			for i, e := range errs {
				parts[i] = displayErr(e)
			}
			return strings.Join(parts, "\n")
		}
	}
	return display(msg)
}
