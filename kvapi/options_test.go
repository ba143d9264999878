package kvapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestNewValidatesOptions(t *testing.T) {
	cases := []struct {
		name string
		opts Options
		want string // substring of the error; "" means valid
	}{
		{"token", Options{AccountID: "a", Token: testToken}, ""},
		{"legacy key", Options{AccountID: "a", Email: "me@example.com", APIKey: "k" + testToken}, ""},
		{"base with trailing slash", Options{BaseURL: "http://127.0.0.1:1/client/v4/", AccountID: "a", Token: testToken}, ""},
		{"no account", Options{Token: testToken}, "AccountID is empty"},
		{"no credentials", Options{AccountID: "a"}, "no credentials"},
		{"both methods", Options{AccountID: "a", Token: testToken, Email: "me@example.com", APIKey: "k"}, "both Token and Email/APIKey"},
		{"email without key", Options{AccountID: "a", Email: "me@example.com"}, "together"},
		{"key without email", Options{AccountID: "a", APIKey: testToken}, "together"},
		{"token with newline", Options{AccountID: "a", Token: testToken + "\n"}, "Token contains"},
		{"token with control char", Options{AccountID: "a", Token: "x\x00" + testToken}, "Token contains"},
		{"bad scheme", Options{BaseURL: "ftp://example.com", AccountID: "a", Token: testToken}, "scheme"},
		{"no host", Options{BaseURL: "http:///x", AccountID: "a", Token: testToken}, "without credentials"},
		{"query in base", Options{BaseURL: "http://h/x?y=1", AccountID: "a", Token: testToken}, "without credentials"},
		{"credentials in base", Options{BaseURL: "http://u:p@h/x", AccountID: "a", Token: testToken}, "without credentials"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.opts)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if c.hc == nil || c.userAgent != DefaultUserAgent || c.now == nil {
					t.Errorf("defaults not filled: %+v", c)
				}
				return
			}
			if err == nil {
				t.Fatalf("New succeeded, want error containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("error %v is not ErrInvalidOptions", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Errorf("error leaks the token: %q", err)
			}
		})
	}
}

func TestDefaultHTTPClientIsSafe(t *testing.T) {
	c, err := New(Options{AccountID: "a", Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := c.hc.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T", c.hc.Transport)
	}
	if tr.TLSClientConfig != nil && tr.TLSClientConfig.InsecureSkipVerify {
		t.Error("default transport skips TLS verification")
	}
	if tr.TLSHandshakeTimeout == 0 || tr.ResponseHeaderTimeout == 0 || c.hc.Timeout == 0 {
		t.Errorf("default client lacks timeouts: tls %v header %v total %v", tr.TLSHandshakeTimeout, tr.ResponseHeaderTimeout, c.hc.Timeout)
	}
	if c.base.String() != DefaultBaseURL {
		t.Errorf("base %q, want %q", c.base, DefaultBaseURL)
	}
}

// TestSecretsNeverPrinted formats options, clients and every kind of error a
// client returns, and looks for the credentials in the output.
func TestSecretsNeverPrinted(t *testing.T) {
	const apiKey = "GLOBALKEY-5e4d3c2b1a"
	var outputs []string
	add := func(v any) {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	tokOpts := Options{AccountID: "a", Token: testToken}
	keyOpts := Options{AccountID: "a", Email: "me@example.com", APIKey: apiKey}
	add(tokOpts)
	add(&tokOpts)
	add(keyOpts)
	for _, o := range []Options{tokOpts, keyOpts} {
		c, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		add(c)
	}
	for _, o := range []Options{
		{AccountID: "a", Token: testToken + "\r\n"},
		{AccountID: "a", Token: testToken, Email: "e", APIKey: apiKey},
		{Token: testToken},
	} {
		_, err := New(o)
		add(err)
	}

	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			t.Errorf("Authorization = %q", r.Header.Get("Authorization"))
		}
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}`)
	})
	add(c.DeleteValue(context.Background(), testNS, "k"))
	add(c.PutValue(context.Background(), testNS, "k", Bytes([]byte("v")), PutOptions{ExpirationTTL: 1}))
	dead, err := New(Options{BaseURL: "http://127.0.0.1:1", AccountID: "a", Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	add(dead.DeleteValue(context.Background(), testNS, "k"))

	for _, out := range outputs {
		if strings.Contains(out, testToken) || strings.Contains(out, apiKey) {
			t.Errorf("credential printed: %s", out)
		}
	}
	if !strings.Contains(fmt.Sprint(tokOpts), "[redacted]") {
		t.Errorf("options do not mark the redaction: %v", tokOpts)
	}
}
