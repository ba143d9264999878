package state

import (
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/desired"
)

// FuzzDecodePlain: whatever the hand-written decoder accepts, encoding/json
// reads the same way; it may only refuse what it need not handle.
func FuzzDecodePlain(f *testing.F) {
	for _, r := range []Record{
		{Hash: "ab", Size: 3, Written: time.Unix(1, 2)},
		{Hash: "ab", ExpirationTTL: 60, ExpirationAt: -1, Pending: true},
		{Hash: "ab", Stamp: desired.Stamp{Dev: 1, Ino: 2, Size: 3, Mtime: 4, Ctime: 5}},
	} {
		b, err := appendEncoded(nil, r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"h":"x","s":1,"s":2}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		plain, ok := decodePlain(v)
		if !ok {
			return
		}
		general, err := decodeJSON(v)
		if err != nil {
			t.Fatalf("decodePlain accepted %q, encoding/json refused it: %v", v, err)
		}
		if !equalRecord(plain, general) {
			t.Fatalf("%q: decodePlain %+v, encoding/json %+v", v, plain, general)
		}
	})
}
