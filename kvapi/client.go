package kvapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultBaseURL is the Cloudflare API v4 endpoint.
const DefaultBaseURL = "https://api.cloudflare.com/client/v4"

// DefaultUserAgent is sent when Options.UserAgent is empty.
const DefaultUserAgent = "kvsync/dev"

// ErrInvalidOptions is the cause of every error New returns.
var ErrInvalidOptions = errors.New("invalid kv client options")

// Options configure a Client.
type Options struct {
	// BaseURL is the API root; DefaultBaseURL when empty. A trailing slash is
	// tolerated.
	BaseURL string
	// AccountID is the Cloudflare account that owns the namespaces.
	AccountID string
	// Token is an API token (Authorization: Bearer). Set either Token, or
	// Email and APIKey (the legacy global key), not both.
	Token string
	// Email and APIKey are the legacy X-Auth-Email/X-Auth-Key pair.
	Email, APIKey string
	// HTTPClient sends the requests; when nil, one with connect, TLS and
	// response-header timeouts is used. The Client works on a copy that
	// follows redirects only within the original scheme, host and port.
	HTTPClient *http.Client
	// UserAgent is sent with every request; DefaultUserAgent when empty.
	UserAgent string
	// Now is the clock used to check absolute expirations and HTTP-date
	// Retry-After values; time.Now when nil.
	Now func() time.Time
}

// String describes the options with every credential redacted.
func (o Options) String() string {
	return fmt.Sprintf("kvapi.Options{BaseURL:%q AccountID:%q Token:%s Email:%q APIKey:%s UserAgent:%q}",
		o.BaseURL, o.AccountID, redacted(o.Token), o.Email, redacted(o.APIKey), o.UserAgent)
}

// GoString is String, so that %#v does not print the credentials either.
func (o Options) GoString() string { return o.String() }

func redacted(secret string) string {
	if secret == "" {
		return `""`
	}
	return "[redacted]"
}

// Client talks to the Workers KV REST API of one account over HTTP. It is
// safe for concurrent use. It neither retries nor rate-limits: every reply
// becomes a result or a typed error (*ValidationError, *APIError,
// *NetworkError, *ValueError, or a context error) for the caller to act on.
type Client struct {
	base      *url.URL
	accountID string
	token     string
	email     string
	apiKey    string
	hc        *http.Client
	userAgent string
	now       func() time.Time
}

var _ KV = (*Client)(nil)

// New validates opts and returns a Client.
func New(opts Options) (*Client, error) {
	bad := func(format string, args ...any) (*Client, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, args...)...)
	}
	raw := opts.BaseURL
	if raw == "" {
		raw = DefaultBaseURL
	}
	base, err := url.Parse(raw)
	if err != nil {
		return bad("BaseURL %q: %v", raw, err)
	}
	if base.Scheme != "http" && base.Scheme != "https" {
		return bad("BaseURL %q: scheme must be http or https", raw)
	}
	if base.Host == "" || base.User != nil || base.RawQuery != "" || base.Fragment != "" || base.Opaque != "" {
		return bad("BaseURL %q: want scheme://host[:port][/path] without credentials, query or fragment", raw)
	}
	base.Path = strings.TrimRight(base.Path, "/")
	base.RawPath = strings.TrimRight(base.RawPath, "/")

	if opts.AccountID == "" {
		return bad("AccountID is empty")
	}
	switch tokenSet, keySet := opts.Token != "", opts.Email != "" || opts.APIKey != ""; {
	case tokenSet && keySet:
		return bad("both Token and Email/APIKey are set; use one authentication method")
	case !tokenSet && !keySet:
		return bad("no credentials: set Token, or Email and APIKey")
	case keySet && (opts.Email == "" || opts.APIKey == ""):
		return bad("Email and APIKey must be set together")
	}
	// The values are checked, never quoted: an error must not leak a secret.
	for _, f := range []struct{ name, v string }{
		{"Token", opts.Token}, {"Email", opts.Email}, {"APIKey", opts.APIKey}, {"UserAgent", opts.UserAgent},
	} {
		if !validHeaderValue(f.v) {
			return bad("%s contains whitespace at an end or characters not allowed in an HTTP header", f.name)
		}
	}

	c := &Client{
		base:      base,
		accountID: opts.AccountID,
		token:     opts.Token,
		email:     opts.Email,
		apiKey:    opts.APIKey,
		hc:        opts.HTTPClient,
		userAgent: opts.UserAgent,
		now:       opts.Now,
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient()
	}
	c.hc = sameOriginRedirects(c.hc)
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// String names the endpoint and account, never the credentials.
func (c *Client) String() string {
	auth := "token"
	if c.token == "" {
		auth = "email+key"
	}
	return fmt.Sprintf("kvapi.Client{%s account %s, auth %s}", c.base.Redacted(), c.accountID, auth)
}

// GoString is String, so that %#v does not print the credentials either.
func (c *Client) GoString() string { return c.String() }

// defaultHTTPClient bounds every phase that can hang on a dead peer, and
// the whole exchange generously enough for a MaxValueBytes value on a slow link;
// callers bound individual requests with their context.
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = 2 * time.Minute
	t.ExpectContinueTimeout = time.Second
	t.IdleConnTimeout = 90 * time.Second
	t.MaxIdleConnsPerHost = 16
	return &http.Client{Transport: t, Timeout: 15 * time.Minute}
}

// sameOriginRedirects returns a copy of hc that follows a redirect only to
// the origin (scheme, host and port) of the original request. net/http drops
// Authorization on a cross-domain redirect but forwards X-Auth-Email and
// X-Auth-Key, and would follow https to http; neither may happen to a
// credential. A refused redirect comes back as the 3xx reply, an *APIError.
func sameOriginRedirects(hc *http.Client) *http.Client {
	cp := *hc
	next := hc.CheckRedirect
	cp.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if first := via[0].URL; req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
			return http.ErrUseLastResponse
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &cp
}

func validHeaderValue(v string) bool {
	if strings.TrimSpace(v) != v {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
