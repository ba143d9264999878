//go:build !unix

package httpserve

// fdLimit is unknown off Unix: the configured cap applies as is.
func fdLimit() int { return 0 }
