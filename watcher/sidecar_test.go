package watcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/kvapi"
)

func TestParseSidecar(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want, err string }{
		{`{"a": 1, "b": [1, 2]}`, `{"a":1,"b":[1,2]}`, ""},
		{"\ufeff{ }", `{}`, ""},
		{" \n{\"k\":\"v\"}\n", `{"k":"v"}`, ""},
		{`[]`, "", "not a JSON object"},
		{`"s"`, "", "not a JSON object"},
		{`null`, "", "not a JSON object"},
		{`{"a":`, "", "not valid JSON"},
		{``, "", "not valid JSON"},
		{"{\"a\":\"\xff\"}", "", "UTF-8"},
		{`{"a":"` + strings.Repeat("x", 1016) + `"}`, `{"a":"` + strings.Repeat("x", 1016) + `"}`, ""},
		{`{"a":"` + strings.Repeat("x", 1017) + `"}`, "", "1025 bytes"},
	}
	for _, tc := range cases {
		got, err := ParseSidecar([]byte(tc.in))
		if tc.err != "" {
			if !errors.Is(err, ErrBadSidecar) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSidecar(%.30q) error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("ParseSidecar(%.30q) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

// TestParseSidecarKVCause: a sidecar that kvapi refuses as metadata keeps
// the sidecar's wording (a user test pins "over the KV limit of 1024"),
// matches kvapi's cause, and is not taken for a request kvapi refused.
func TestParseSidecarKVCause(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in    string
		cause error
		text  string
	}{
		{`[1]`, kvapi.ErrMetadataNotObject, "invalid metadata sidecar: not a JSON object"},
		{` { "a" : "` + strings.Repeat("x", 1017) + `" } `, kvapi.ErrMetadataTooLarge,
			fmt.Sprintf("invalid metadata sidecar: 1025 bytes compacted, over the KV limit of %d", kvapi.MaxMetadataBytes)},
	}
	for _, tc := range cases {
		_, err := ParseSidecar([]byte(tc.in))
		var ve *kvapi.ValidationError
		if !errors.Is(err, ErrBadSidecar) || !errors.Is(err, tc.cause) || errors.As(err, &ve) || err.Error() != tc.text {
			t.Errorf("ParseSidecar(%.30q) error %v, want %q wrapping ErrBadSidecar and %v, no ValidationError", tc.in, err, tc.text, tc.cause)
		}
	}
}

// FuzzParseSidecar: a sidecar is accepted exactly when KV would accept its
// content as metadata (kvapi.ValidateMetadata; an empty file is a broken
// sidecar, not "no metadata"), and the result is json.Compact's.
func FuzzParseSidecar(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, ` { "a" : [ 1 , { } ] } `, `[]`, `{"a":`, "\ufeff{}", `{"a":"\u00e9"}`, `null`, ``,
		"\ufeff", ` `, `{"a":"<>&\u2028"}`, "{\"a\":\"" + strings.Repeat("x", 1016) + "\"}", "{\"a\":\"" + strings.Repeat("x", 1017) + "\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := ParseSidecar(data)
		body := bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
		want, werr := kvapi.ValidateMetadata(body)
		wantOK := werr == nil && len(body) > 0
		if (err == nil) != wantOK {
			t.Fatalf("ParseSidecar(%q) error %v, want accepted = %v (validator: %v)", data, err, wantOK, werr)
		}
		if err != nil {
			if !errors.Is(err, ErrBadSidecar) {
				t.Fatalf("error %v does not wrap ErrBadSidecar", err)
			}
			return
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, body); err != nil {
			t.Fatalf("accepted %q, which json.Compact refuses: %v", data, err)
		}
		if !bytes.Equal(out, compact.Bytes()) || !bytes.Equal(out, want) {
			t.Fatalf("ParseSidecar(%q) = %q, want json.Compact's %q", data, out, compact.Bytes())
		}
	})
}

func TestScanSidecarSymlinkOutside(t *testing.T) {
	t.Parallel()
	root, outside := t.TempDir(), t.TempDir()
	write(t, outside, "m.json", `{"secret":1}`)
	write(t, root, "f.txt", "f")
	if err := os.Symlink(filepath.Join(outside, "m.json"), filepath.Join(root, "f.txt.meta.json")); err != nil {
		t.Fatal(err)
	}
	got := scanKeys(t, testOpts(t, root))["f.txt"]
	if !errors.Is(got.Err, ErrBadSidecar) || got.Metadata != nil {
		t.Fatalf("state %+v, want held back for a sidecar leading outside the root", got)
	}
	opts := testOpts(t, root)
	opts.AllowSymlinksOutside = true
	if got := scanKeys(t, opts)["f.txt"]; got.Err != nil || string(got.Metadata) != `{"secret":1}` {
		t.Fatalf("with AllowSymlinksOutside: %+v", got)
	}
}
