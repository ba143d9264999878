package kvapi

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

// escapeByByte is the plain definition of the escaping appendJSONEscaped
// does, one byte at a time: the word-at-a-time version must match it.
func escapeByByte(dst, src []byte, limit int) ([]byte, int) {
	const hex = "0123456789abcdef"
	i := 0
	for ; i < len(src) && len(dst)+6 <= limit; i++ {
		c := src[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return dst, i
}

// checkEscaping compares appendJSONEscaped and jsonEscapedLen with the
// byte-at-a-time definition for src, whole and in chunks of limit bytes.
func checkEscaping(t *testing.T, src []byte, limit int) {
	t.Helper()
	var got []byte
	for rest := src; len(rest) > 0; {
		g, used := appendJSONEscaped(nil, rest, limit)
		if len(g) > limit {
			t.Fatalf("limit %d: produced %d bytes", limit, len(g))
		}
		if used == 0 {
			t.Fatalf("limit %d: no progress at %q", limit, rest[:min(len(rest), 16)])
		}
		// Where a chunk ends may differ from the reference (the fast
		// version fills up to the limit differently), the concatenation
		// may not.
		got = append(got, g...)
		rest = rest[used:]
	}
	if ref, _ := escapeByByte(nil, src, 1<<30); !bytes.Equal(got, ref) {
		t.Fatalf("limit %d: escaped %q\nwant %q", limit, got, ref)
	}
	if n := jsonEscapedLen(src); n != int64(len(got)) {
		t.Fatalf("jsonEscapedLen = %d, escaping produced %d bytes", n, len(got))
	}
	if utf8.Valid(src) {
		var back string
		if err := json.Unmarshal(append(append([]byte{'"'}, got...), '"'), &back); err != nil || back != string(src) {
			t.Fatalf("%q does not decode back to the value: %q, %v", got, back, err)
		}
	}
}

func TestJSONEscapingMatchesDefinition(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"plain":          "hello, world: 0123456789 abcdefghijklmnopqrstuvwxyz",
		"quote at 0":     `"abcdefghijklmnop`,
		"quote at 7":     `abcdefg"hijklmnop`,
		"quote at 8":     `abcdefgh"ijklmnop`,
		"backslash end":  `abcdefghijklmno\`,
		"controls":       "\x00\x01\x1f\x7f\n\r\t\b\f",
		"all escapes":    "\"\\\n\r\t\x00",
		"multibyte":      "héllo wörld ✓ 日本語 \U0001F600 and more text",
		"invalid utf8":   "ab\xff\xfe\xc3cd\x80",
		"high then ctl":  "\xc3\xa9\x1f\xc3\xa9\x1f",
		"space boundary": "\x1f\x20\x21\x22\x5b\x5c\x5d",
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			for _, limit := range []int{6, 7, 8, 13, 64, 1 << 20} {
				checkEscaping(t, []byte(s), limit)
			}
		})
	}
	t.Run("random", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		alphabet := []byte("abcdefgh \"\\\n\r\t\x00\x1f\x7f\x80\xc3\xa9\xff")
		for range 2000 {
			src := make([]byte, r.IntN(100))
			for i := range src {
				if r.IntN(4) == 0 {
					src[i] = alphabet[r.IntN(len(alphabet))]
				} else {
					src[i] = byte(r.IntN(256))
				}
			}
			checkEscaping(t, src, 6+r.IntN(40))
		}
	})
}

func FuzzJSONEscaping(f *testing.F) {
	f.Add([]byte("plain text with a \" quote"), 16)
	f.Add([]byte("\x00\x01\xff\\\n"), 6)
	f.Fuzz(func(t *testing.T, src []byte, limit int) {
		if limit < 6 || limit > 1<<16 {
			return
		}
		checkEscaping(t, src, limit)
	})
}

func BenchmarkJSONEscape1KiB(b *testing.B) {
	src := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog.\n"), 1024/45+1)[:1024]
	dst := make([]byte, 0, 2048)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		dst, _ = appendJSONEscaped(dst[:0], src, cap(dst))
		_ = jsonEscapedLen(src)
	}
}
