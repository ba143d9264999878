package watcher

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/kvsync/kvsync/kvapi"
)

// ErrKeyInvalid is wrapped by KeyFor's errors, for errors.Is.
var ErrKeyInvalid = errors.New("invalid key")

// KeyFor maps a /-separated path relative to the root to its KV key:
// prefix + rel, verbatim. It refuses what KV would refuse (an empty key,
// "." or "..", over kvapi.MaxKeyBytes bytes, not UTF-8) and what no scan of
// a tree yields (an absolute or unclean relative path), so a key never
// silently differs from its file's path.
func KeyFor(prefix, rel string) (string, error) {
	if rel == "" {
		return "", fmt.Errorf("%w: empty relative path", ErrKeyInvalid)
	}
	if !utf8.ValidString(rel) {
		return "", fmt.Errorf("%w: path %q is not valid UTF-8", ErrKeyInvalid, rel)
	}
	if !utf8.ValidString(prefix) {
		return "", fmt.Errorf("%w: prefix %q is not valid UTF-8", ErrKeyInvalid, prefix)
	}
	if strings.HasPrefix(rel, "/") || strings.HasSuffix(rel, "/") {
		return "", fmt.Errorf("%w: path %q is not a relative file path", ErrKeyInvalid, rel)
	}
	for seg := range strings.SplitSeq(rel, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("%w: path %q has an empty, \".\" or \"..\" segment", ErrKeyInvalid, rel)
		}
	}
	key := prefix + rel
	if n := len(key); n > kvapi.MaxKeyBytes {
		return "", fmt.Errorf("%w: key is %d bytes, over the KV limit of %d", ErrKeyInvalid, n, kvapi.MaxKeyBytes)
	}
	if key == "." || key == ".." {
		return "", fmt.Errorf("%w: key %q is not allowed by KV", ErrKeyInvalid, key)
	}
	return key, nil
}
