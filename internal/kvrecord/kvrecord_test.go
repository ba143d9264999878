package kvrecord

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kvsync/kvsync/kvapi"
)

func TestOwnerOf(t *testing.T) {
	a := OwnerOf("ns1", "site/")
	tests := []struct {
		name      string
		ns, pre   string
		wantEqual bool
	}{
		{"same namespace and prefix", "ns1", "site/", true},
		{"other prefix", "ns1", "site/a/", false},
		{"other namespace", "ns2", "site/", false},
		{"no prefix", "ns1", "", false},
		// The fields are length-prefixed: moving a byte from one to the
		// other is another owner.
		{"boundary moved", "ns1s", "ite/", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := OwnerOf(tc.ns, tc.pre)
			if len(b) != ownerLen {
				t.Fatalf("owner %q has %d characters, want %d", b, len(b), ownerLen)
			}
			if (a == b) != tc.wantEqual {
				t.Errorf("OwnerOf(ns1, site/) = %q, OwnerOf(%q, %q) = %q; equal want %v", a, tc.ns, tc.pre, b, tc.wantEqual)
			}
		})
	}
}

func TestDigestOf(t *testing.T) {
	v := sha256.Sum256([]byte("hello"))
	base := DigestOf(v, json.RawMessage(`{"a":1}`), Rule{TTL: 3600})
	tests := []struct {
		name string
		d    Digest
		same bool
	}{
		{"same inputs", DigestOf(v, json.RawMessage(`{"a":1}`), Rule{TTL: 3600}), true},
		{"other value", DigestOf(sha256.Sum256([]byte("hello!")), json.RawMessage(`{"a":1}`), Rule{TTL: 3600}), false},
		{"other metadata", DigestOf(v, json.RawMessage(`{"a":2}`), Rule{TTL: 3600}), false},
		{"no metadata", DigestOf(v, nil, Rule{TTL: 3600}), false},
		{"other ttl", DigestOf(v, json.RawMessage(`{"a":1}`), Rule{TTL: 7200}), false},
		{"absolute instead of ttl", DigestOf(v, json.RawMessage(`{"a":1}`), Rule{At: 3600}), false},
		{"no expiration", DigestOf(v, json.RawMessage(`{"a":1}`), Rule{}), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.d == base) != tc.same {
				t.Errorf("digest equal = %v, want %v", tc.d == base, tc.same)
			}
		})
	}
}

func TestMarkRoundTrip(t *testing.T) {
	o := OwnerOf("ns", "p/")
	d := DigestOf(sha256.Sum256([]byte("x")), nil, Rule{})
	for _, m := range []Mark{{Owner: o, Digest: d}, {Owner: o, Expiring: true}} {
		s := m.String()
		got, ok := ParseMark(s)
		if !ok || got != m {
			t.Errorf("ParseMark(%q) = %+v, %v; want %+v", s, got, ok, m)
		}
		if !m.Expiring && len(s) != markLen {
			t.Errorf("mark %q is %d bytes, want %d", s, len(s), markLen)
		}
	}
	for _, bad := range []string{"", "1", "2." + string(o) + ".x", "1.short.x", "1." + string(o) + ".notbase64!", "1." + string(o) + ".AAAA", "1." + string(o)} {
		if m, ok := ParseMark(bad); ok {
			t.Errorf("ParseMark(%q) = %+v, ok; want refused", bad, m)
		}
	}
}

func TestAddSplit(t *testing.T) {
	m := Mark{Owner: OwnerOf("ns", ""), Digest: DigestOf(sha256.Sum256(nil), nil, Rule{})}
	field := `"_kvsync":"` + m.String() + `"`
	tests := []struct {
		name, in, sent, user string
	}{
		{"no sidecar", ``, `{` + field + `}`, ``},
		{"empty object", `{}`, `{` + field + `}`, ``},
		{"fields kept in order", `{"z":1,"a":[1,2],"m":{"k":"<&>"}}`, `{"z":1,"a":[1,2],"m":{"k":"<&>"},` + field + `}`, `{"z":1,"a":[1,2],"m":{"k":"<&>"}}`},
		{"unicode and escapes", `{"é":"\u00e9\n"}`, `{"é":"\u00e9\n",` + field + `}`, `{"é":"\u00e9\n"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sent := Add(json.RawMessage(tc.in), m)
			if string(sent) != tc.sent {
				t.Fatalf("Add = %s, want %s", sent, tc.sent)
			}
			if !json.Valid(sent) {
				t.Fatalf("Add gave invalid JSON %s", sent)
			}
			if tc.in != "" && tc.in != "{}" && len(sent) != len(tc.in)+Reserved {
				t.Errorf("Add grew %d bytes to %d, want +%d", len(tc.in), len(sent), Reserved)
			}
			user, got, ok := Split(sent)
			if !ok || got != m {
				t.Errorf("Split mark = %+v, %v; want %+v", got, ok, m)
			}
			if string(user) != tc.user {
				t.Errorf("Split user metadata = %s, want %s", user, tc.user)
			}
		})
	}
	t.Run("another tool's metadata", func(t *testing.T) {
		user, _, ok := Split(json.RawMessage(`{"a": 1}`))
		if ok || string(user) != `{"a":1}` {
			t.Errorf("Split = %s, %v; want {\"a\":1} and no mark", user, ok)
		}
	})
	t.Run("invalid mark", func(t *testing.T) {
		user, _, ok := Split(json.RawMessage(`{"a":1,"_kvsync":"forged"}`))
		if ok || string(user) != `{"a":1}` {
			t.Errorf("Split = %s, %v; want {\"a\":1} and no mark", user, ok)
		}
	})
}

func TestCheckSidecar(t *testing.T) {
	fits := `{"k":"` + strings.Repeat("x", kvapi.MaxMetadataBytes-Reserved-8) + `"}`
	over := `{"k":"` + strings.Repeat("x", kvapi.MaxMetadataBytes-Reserved-7) + `"}`
	tests := []struct {
		name, in string
		want     error
	}{
		{"none", ``, nil},
		{"small", `{"a":1}`, nil},
		{"exactly the budget", fits, nil},
		{"one byte over", over, &BudgetError{}},
		{"sets the field", `{"_kvsync":"x"}`, ErrReserved},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSidecar(json.RawMessage(tc.in), kvapi.MaxMetadataBytes)
			var be *BudgetError
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("CheckSidecar: %v", err)
			case tc.want == ErrReserved && !errors.Is(err, ErrReserved):
				t.Fatalf("CheckSidecar = %v, want ErrReserved", err)
			case tc.want != nil && tc.want != ErrReserved && !errors.As(err, &be):
				t.Fatalf("CheckSidecar = %v, want a BudgetError", err)
			}
			if be != nil {
				want := "metadata is 976 bytes; at most 975 are available because kvsync reserves 49"
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
	if len(fits) != kvapi.MaxMetadataBytes-Reserved || len(Add(json.RawMessage(fits), sizing)) != kvapi.MaxMetadataBytes {
		t.Errorf("test sizes: fits is %d bytes, %d with the field", len(fits), len(Add(json.RawMessage(fits), sizing)))
	}
}
