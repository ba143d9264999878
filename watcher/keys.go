package watcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/kvsync/kvsync/kvapi"
)

// Errors of the key mapping and of sidecars, for errors.Is.
var (
	ErrKeyInvalid = errors.New("invalid key")
	ErrBadSidecar = errors.New("invalid metadata sidecar")
)

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

// ParseSidecar validates the content of a metadata sidecar and returns it
// compacted: a JSON object of at most kvapi.MaxMetadataBytes bytes. A
// leading UTF-8 byte order mark, which some editors write, is dropped.
// Errors wrap ErrBadSidecar and say what is wrong, not which file; callers
// add the name.
func ParseSidecar(data []byte) (json.RawMessage, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrBadSidecar)
	}
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("%w: not valid JSON: %v", ErrBadSidecar, err)
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadSidecar)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSidecar, err)
	}
	if buf.Len() > kvapi.MaxMetadataBytes {
		return nil, fmt.Errorf("%w: %d bytes compacted, over the KV limit of %d", ErrBadSidecar, buf.Len(), kvapi.MaxMetadataBytes)
	}
	return json.RawMessage(buf.Bytes()), nil
}
