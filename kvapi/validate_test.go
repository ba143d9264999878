package kvapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// metadataOfSize returns a compact JSON object of exactly n bytes.
func metadataOfSize(n int) json.RawMessage {
	const frame = len(`{"k":""}`)
	return json.RawMessage(`{"k":"` + strings.Repeat("m", n-frame) + `"}`)
}

func TestValidators(t *testing.T) {
	multibyte512 := strings.Repeat("é", 256) // 512 bytes, 256 characters
	multibyte514 := strings.Repeat("é", 257) // 514 bytes, 257 characters: under 512 characters, over 512 bytes
	if len(multibyte514) <= MaxKeyBytes || utf8.RuneCountInString(multibyte514) >= MaxKeyBytes {
		t.Fatal("fixture does not separate bytes from characters")
	}
	keys := []struct {
		key  string
		want error
	}{
		{"a", nil},
		{strings.Repeat("k", 512), nil},
		{multibyte512, nil},
		{strings.Repeat("€", 170) + "xx", nil}, // 512 bytes
		{"", ErrKeyEmpty},
		{strings.Repeat("k", 513), ErrKeyTooLong},
		{multibyte514, ErrKeyTooLong},
		{".", ErrKeyReserved},
		{"..", ErrKeyReserved},
		{"...", nil},
		{"a/..", nil},
		{"bad\xffutf8", ErrKeyInvalidUTF8},
	}
	for _, tc := range keys {
		err := ValidateKey(tc.key)
		checkValidation(t, "ValidateKey("+abbrev(tc.key)+")", err, tc.want, "key")
	}

	metas := []struct {
		in, compact string
		want        error
	}{
		{``, ``, nil},
		{`{}`, `{}`, nil},
		{" {\n \"a\" : [1, 2],\t\"b\": {\"c\": null} }\n", `{"a":[1,2],"b":{"c":null}}`, nil},
		{string(metadataOfSize(1024)), string(metadataOfSize(1024)), nil},
		// 1024 bytes compacted, far more before: the compacted size counts.
		{strings.Replace(string(metadataOfSize(1024)), `{`, `{`+strings.Repeat(" ", 500), 1), string(metadataOfSize(1024)), nil},
		{string(metadataOfSize(1025)), ``, ErrMetadataTooLarge},
		{`null`, ``, ErrMetadataNotObject},
		{`[1]`, ``, ErrMetadataNotObject},
		{`"s"`, ``, ErrMetadataNotObject},
		{`42`, ``, ErrMetadataNotObject},
		{`true`, ``, ErrMetadataNotObject},
		{`{"a":`, ``, ErrMetadataNotObject},
		{`{} {}`, ``, ErrMetadataNotObject},
		{"{\"a\":\"\xff\"}", ``, ErrMetadataNotObject},
	}
	for _, tc := range metas {
		got, err := ValidateMetadata(json.RawMessage(tc.in))
		checkValidation(t, "ValidateMetadata("+abbrev(tc.in)+")", err, tc.want, "metadata")
		if err == nil && string(got) != tc.compact {
			t.Errorf("ValidateMetadata(%s) = %s, want %s", abbrev(tc.in), got, tc.compact)
		}
	}

	now := testNow.Unix()
	exps := []struct {
		name     string
		exp, ttl int64
		want     error
		field    string
	}{
		{"none", 0, 0, nil, ""},
		{"ttl 60", 0, 60, nil, ""},
		{"ttl 59", 0, 59, ErrTTLTooShort, "expiration_ttl"},
		{"ttl 1", 0, 1, ErrTTLTooShort, "expiration_ttl"},
		{"ttl negative", 0, -60, ErrTTLTooShort, "expiration_ttl"},
		{"exp now+60", now + 60, 0, nil, ""},
		{"exp now+59", now + 59, 0, ErrExpirationTooSoon, "expiration"},
		{"exp past", now - 1000, 0, ErrExpirationTooSoon, "expiration"},
		{"exp negative", -5, 0, ErrExpirationTooSoon, "expiration"},
		{"ttl wins over a stale exp", now - 1000, 120, nil, ""},
		{"short ttl with good exp", now + 3600, 30, ErrTTLTooShort, "expiration_ttl"},
	}
	for _, tc := range exps {
		err := ValidateExpiration(tc.exp, tc.ttl, testNow)
		checkValidation(t, "ValidateExpiration "+tc.name, err, tc.want, tc.field)
	}
}

func checkValidation(t *testing.T, what string, err, want error, field string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
		return
	}
	var ve *ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, want) {
		t.Errorf("%s = %v, want ValidationError %v", what, err, want)
		return
	}
	if ve.Field != field {
		t.Errorf("%s: field %q, want %q", what, ve.Field, field)
	}
	if IsRetryable(err) {
		t.Errorf("%s: validation error is retryable", what)
	}
}

func abbrev(s string) string {
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}

// TestLimitsEnforcedBeforeSending drives every operation with requests just
// over a limit (the server must see nothing) and exactly at it (the server
// must see the request).
func TestLimitsEnforcedBeforeSending(t *testing.T) {
	ctx := context.Background()
	over := []struct {
		name string
		call func(c *Client) error
		want error
	}{
		{"put key empty", func(c *Client) error { return c.PutValue(ctx, testNS, "", Bytes(nil), PutOptions{}) }, ErrKeyEmpty},
		{"put key 513 bytes", func(c *Client) error {
			return c.PutValue(ctx, testNS, strings.Repeat("k", 513), Bytes(nil), PutOptions{})
		}, ErrKeyTooLong},
		{"put key 257 two-byte chars", func(c *Client) error {
			return c.PutValue(ctx, testNS, strings.Repeat("é", 257), Bytes(nil), PutOptions{})
		}, ErrKeyTooLong},
		{"put key dot", func(c *Client) error { return c.PutValue(ctx, testNS, ".", Bytes(nil), PutOptions{}) }, ErrKeyReserved},
		{"put key dotdot", func(c *Client) error { return c.PutValue(ctx, testNS, "..", Bytes(nil), PutOptions{}) }, ErrKeyReserved},
		{"put value 25MiB+1", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", genValue{size: MaxValueBytes + 1}, PutOptions{})
		}, ErrValueTooLarge},
		{"put nil value", func(c *Client) error { return c.PutValue(ctx, testNS, "k", nil, PutOptions{}) }, ErrValueInvalid},
		{"put metadata null", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{Metadata: json.RawMessage(`null`)})
		}, ErrMetadataNotObject},
		{"put metadata array", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{Metadata: json.RawMessage(`[]`)})
		}, ErrMetadataNotObject},
		{"put metadata invalid", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{Metadata: json.RawMessage(`{`)})
		}, ErrMetadataNotObject},
		{"put metadata 1025", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{Metadata: metadataOfSize(1025)})
		}, ErrMetadataTooLarge},
		{"put ttl 59", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{ExpirationTTL: 59})
		}, ErrTTLTooShort},
		{"put ttl negative", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{ExpirationTTL: -1})
		}, ErrTTLTooShort},
		{"put expiration now+59", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes(nil), PutOptions{Expiration: testNow.Unix() + 59})
		}, ErrExpirationTooSoon},
		{"put empty namespace", func(c *Client) error { return c.PutValue(ctx, "", "k", Bytes(nil), PutOptions{}) }, ErrNamespaceEmpty},
		{"delete key dotdot", func(c *Client) error { return c.DeleteValue(ctx, testNS, "..") }, ErrKeyReserved},
		{"get key too long", func(c *Client) error {
			_, err := c.GetValue(ctx, testNS, strings.Repeat("k", 513))
			return err
		}, ErrKeyTooLong},
		{"get metadata key empty", func(c *Client) error {
			_, err := c.GetMetadata(ctx, testNS, "")
			return err
		}, ErrKeyEmpty},
		{"list limit 9", func(c *Client) error {
			_, err := c.ListKeys(ctx, testNS, ListOptions{Limit: 9})
			return err
		}, ErrListLimit},
		{"list limit 1001", func(c *Client) error {
			_, err := c.ListKeys(ctx, testNS, ListOptions{Limit: 1001})
			return err
		}, ErrListLimit},
		{"bulk 10001 pairs", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, make([]BulkPair, MaxBulkPairs+1))
			return err
		}, ErrBulkTooLarge},
		{"bulk over 100 MB encoded", func(c *Client) error {
			// Control bytes encode to six JSON bytes each: 16.7 MB of them
			// is a legal value whose encoding exceeds the request limit.
			v := make([]byte, 16_700_000)
			for i := range v {
				v[i] = 1
			}
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "big", Value: v}})
			return err
		}, ErrBulkTooLarge},
		{"bulk bad pair among good", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2"), ExpirationTTL: 30}, {Key: "c"}})
			return err
		}, ErrTTLTooShort},
		{"bulk bad key", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "a"}, {Key: "."}})
			return err
		}, ErrKeyReserved},
		{"bulk bad metadata", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "a", Metadata: json.RawMessage(`"s"`)}})
			return err
		}, ErrMetadataNotObject},
		{"bulk value 25MiB+1", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "a", Value: make([]byte, MaxValueBytes+1)}})
			return err
		}, ErrValueTooLarge},
		{"bulk expiration too soon", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{Key: "a", Expiration: testNow.Unix()}})
			return err
		}, ErrExpirationTooSoon},
		{"bulk delete 10001 keys", func(c *Client) error {
			keys := make([]string, MaxBulkPairs+1)
			for i := range keys {
				keys[i] = "k"
			}
			_, err := c.BulkDelete(ctx, testNS, keys)
			return err
		}, ErrBulkTooLarge},
		{"bulk delete bad key", func(c *Client) error {
			_, err := c.BulkDelete(ctx, testNS, []string{"ok", ""})
			return err
		}, ErrKeyEmpty},
	}
	for _, tc := range over {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			c, n := newTestClient(t, okHandler)
			err := tc.call(c)
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want a ValidationError %v", err, tc.want)
			}
			if got := n.Load(); got != 0 {
				t.Errorf("server saw %d requests, want 0", got)
			}
		})
	}

	tenThousand := make([]BulkPair, MaxBulkPairs)
	for i := range tenThousand {
		tenThousand[i] = BulkPair{Key: strings.Repeat("k", i%50+1), Value: []byte("v")}
	}
	at := []struct {
		name string
		call func(c *Client) error
	}{
		{"key 512 bytes", func(c *Client) error {
			return c.PutValue(ctx, testNS, strings.Repeat("k", 512), Bytes([]byte("v")), PutOptions{})
		}},
		{"key 512 bytes of 256 two-byte chars", func(c *Client) error {
			return c.PutValue(ctx, testNS, strings.Repeat("é", 256), Bytes([]byte("v")), PutOptions{})
		}},
		{"metadata 1024 bytes", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{Metadata: metadataOfSize(1024)})
		}},
		{"value 25 MiB", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", genValue{size: MaxValueBytes}, PutOptions{})
		}},
		{"ttl 60", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{ExpirationTTL: 60})
		}},
		{"expiration now+60", func(c *Client) error {
			return c.PutValue(ctx, testNS, "k", Bytes([]byte("v")), PutOptions{Expiration: testNow.Unix() + 60})
		}},
		{"list limit 10", func(c *Client) error { _, err := c.ListKeys(ctx, testNS, ListOptions{Limit: 10}); return err }},
		{"list limit 1000", func(c *Client) error { _, err := c.ListKeys(ctx, testNS, ListOptions{Limit: 1000}); return err }},
		{"bulk 10000 pairs", func(c *Client) error { _, err := c.BulkPut(ctx, testNS, tenThousand); return err }},
		{"bulk pair at every limit", func(c *Client) error {
			_, err := c.BulkPut(ctx, testNS, []BulkPair{{
				Key: strings.Repeat("é", 256), Value: []byte("v"), Metadata: metadataOfSize(1024), ExpirationTTL: 60,
			}, {Key: "e", Expiration: testNow.Unix() + 60}})
			return err
		}},
	}
	for _, tc := range at {
		t.Run("accepted/"+tc.name, func(t *testing.T) {
			c, n := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					writeOK(w, "[]")
					return
				}
				okHandler(w, r)
			})
			if err := tc.call(c); err != nil {
				t.Fatal(err)
			}
			if got := n.Load(); got != 1 {
				t.Errorf("server saw %d requests, want 1", got)
			}
		})
	}
}
