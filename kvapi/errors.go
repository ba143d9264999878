package kvapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sentinel causes of a ValidationError; match them with errors.Is. Their
// texts are derived from the limits in kvapi.go, which own the numbers.
var (
	ErrKeyEmpty          = errors.New("key is empty")
	ErrKeyTooLong        = fmt.Errorf("key is longer than %d bytes", MaxKeyBytes)
	ErrKeyReserved       = errors.New(`key may not be "." or ".."`)
	ErrValueTooLarge     = fmt.Errorf("value is larger than %s", mebibytes(MaxValueBytes))
	ErrMetadataNotObject = errors.New("metadata is not a JSON object")
	ErrMetadataTooLarge  = fmt.Errorf("metadata is larger than %d bytes", MaxMetadataBytes)
	ErrTTLTooShort       = fmt.Errorf("expiration_ttl is under %d seconds", MinTTLSeconds)
	ErrExpirationTooSoon = fmt.Errorf("expiration is less than %d seconds ahead", MinExpirationAheadSeconds)
	ErrBulkTooLarge      = fmt.Errorf("bulk request exceeds %s pairs or %s",
		thousands(MaxBulkPairs), megabytes(MaxBulkRequestBytes))
	// ErrKeyInvalidUTF8: the API's keys are strings; an invalid byte would be
	// replaced on the way, so two different names could land on one key.
	ErrKeyInvalidUTF8 = errors.New("key is not valid UTF-8")
	// ErrNamespaceEmpty: a request without a namespace id would address the
	// namespace collection instead.
	ErrNamespaceEmpty = errors.New("namespace id is empty")
	ErrListLimit      = fmt.Errorf("list limit is outside %d..%d", MinListLimit, MaxListLimit)
	ErrValueInvalid   = errors.New("value is missing or has a negative size")
	// ErrValueSizeMismatch is the cause of a ValueError whose reader yielded
	// fewer or more bytes than the Value's Size.
	ErrValueSizeMismatch = errors.New("value yielded a different number of bytes than its size")
)

// mebibytes, megabytes and thousands write a limit the way Cloudflare's
// documentation states it (in MiB, in MB, with a thousands separator), so a
// message can be matched against the docs. They are exact only for the round limits they
// are used on; a limit that stops being round shows up in the tests.
func mebibytes(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

func megabytes(n int64) string { return fmt.Sprintf("%d MB", n/1_000_000) }

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// ValidationError is a request refused locally, before anything was sent.
// It is permanent: sending it again cannot succeed.
type ValidationError struct {
	// Field is the part of the request at fault: key, value, metadata,
	// expiration_ttl, expiration or bulk.
	Field string
	Key   string
	Err   error
}

func (e *ValidationError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("kv: invalid %s: %v", e.Field, e.Err)
	}
	return fmt.Sprintf("kv: key %q: invalid %s: %v", e.Key, e.Field, e.Err)
}

func (e *ValidationError) Unwrap() error { return e.Err }

// ErrorItem is one entry of the envelope's errors array.
type ErrorItem struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// APIError is a reply that was not a success: a non-2xx status, or a 2xx
// whose envelope said success:false, or a body that could not be parsed.
type APIError struct {
	Op         Op
	Key        string
	StatusCode int
	Errors     []ErrorItem
	// RetryAfter is the server's Retry-After, zero when absent.
	RetryAfter time.Duration
	// Detail describes a malformed reply (not JSON, truncated), if any.
	Detail string
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kv %s", e.Op)
	if e.Key != "" {
		fmt.Fprintf(&b, " key %q", e.Key)
	}
	fmt.Fprintf(&b, ": HTTP %d", e.StatusCode)
	for _, it := range e.Errors {
		fmt.Fprintf(&b, "; code %d: %s", it.Code, it.Message)
	}
	if e.Detail != "" {
		fmt.Fprintf(&b, "; %s", e.Detail)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

// Retryable reports whether sending the same request again may succeed:
// 429, 5xx, and 408/409 as Cloudflare's own SDK treats them.
func (e *APIError) Retryable() bool {
	switch {
	case e.StatusCode == 429, e.StatusCode == 408, e.StatusCode == 409:
		return true
	case e.StatusCode >= 500:
		return true
	}
	return false
}

// Codes returns the Cloudflare error codes of the reply.
func (e *APIError) Codes() []int {
	codes := make([]int, len(e.Errors))
	for i, it := range e.Errors {
		codes[i] = it.Code
	}
	return codes
}

// ErrCertificateNotTrusted matches (errors.Is) a NetworkError whose TLS
// handshake failed because the server's certificate could not be verified:
// an unknown authority, a name it is not valid for, an expired certificate.
// It is permanent: the next handshake meets the same certificate, and a
// proxy or a misconfigured base URL is not fixed by trying again.
var ErrCertificateNotTrusted = errors.New("the server's TLS certificate is not trusted")

// NetworkError is a request that got no complete reply: a refused or dropped
// connection, a timeout, a reply cut off mid-body. It is retryable, unless
// the server's certificate failed verification (ErrCertificateNotTrusted).
type NetworkError struct {
	Op  Op
	Key string
	Err error
}

func (e *NetworkError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kv %s", e.Op)
	if e.Key != "" {
		fmt.Fprintf(&b, " key %q", e.Key)
	}
	b.WriteString(": ")
	if certificateNotTrusted(e.Err) {
		// Go's own text ("failed to verify certificate") reads like a
		// glitch; say plainly that it is the certificate, so the operator
		// looks at the CA bundle rather than waiting for a retry.
		b.WriteString(ErrCertificateNotTrusted.Error())
		b.WriteString(": ")
	}
	fmt.Fprint(&b, e.Err)
	return b.String()
}

func (e *NetworkError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrCertificateNotTrusted) hold for a failed
// certificate verification without hiding the transport's own error from
// errors.As.
func (e *NetworkError) Is(target error) bool {
	return target == ErrCertificateNotTrusted && certificateNotTrusted(e.Err)
}

// certificateNotTrusted reports whether err (typically a *url.Error from the
// HTTP client) carries a failed verification of the server's certificate.
// crypto/tls wraps every verification failure of a client handshake in
// *tls.CertificateVerificationError; the x509 types are matched too for
// transports that return them bare.
func certificateNotTrusted(err error) bool {
	var (
		verification *tls.CertificateVerificationError
		authority    x509.UnknownAuthorityError
		hostname     x509.HostnameError
		invalid      x509.CertificateInvalidError
	)
	return errors.As(err, &verification) || errors.As(err, &authority) ||
		errors.As(err, &hostname) || errors.As(err, &invalid)
}

// ValueError is a write whose body could not be produced: Value.Open failed,
// its reader failed, or it yielded a different number of bytes than Size (the
// file changed while it was read). The request was aborted before the closing
// part of the body went out, so the server cannot have stored a partial value.
// It is not retryable as is: the source must be looked at again.
type ValueError struct {
	Op  Op
	Key string
	Err error
}

func (e *ValueError) Error() string {
	return fmt.Sprintf("kv %s key %q: reading value: %v", e.Op, e.Key, e.Err)
}

func (e *ValueError) Unwrap() error { return e.Err }

// IsRetryable reports whether err may go away if the request is sent again.
// Context cancellation and an untrusted server certificate
// (ErrCertificateNotTrusted) are not retryable.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrCertificateNotTrusted) {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Retryable()
	}
	var ne *NetworkError
	return errors.As(err, &ne)
}

// IsRateLimited reports whether err is a 429 and the server's Retry-After.
func IsRateLimited(err error) (retryAfter time.Duration, ok bool) {
	var ae *APIError
	if errors.As(err, &ae) && ae.StatusCode == 429 {
		return ae.RetryAfter, true
	}
	return 0, false
}

// StatusCode returns the HTTP status of err's reply, or 0 when there was none.
func StatusCode(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}
