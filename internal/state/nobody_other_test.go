//go:build !unix

package state

import "testing"

// openAsNobody needs Unix users; elsewhere root's bypass of file modes does
// not arise, so the test never calls it.
func openAsNobody(t *testing.T, _, _ string) string {
	t.Helper()
	t.Fatal("openAsNobody runs only on Unix")
	return ""
}
