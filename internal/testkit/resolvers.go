package testkit

import (
	"testing"

	"github.com/kvsync/kvsync/internal/beneath"
)

// Resolvers runs f once with openat2 and once with the component walk
// that replaces it where the kernel lacks it or a seccomp filter refuses
// it, so a test of what is opened beneath a root covers both. It switches
// the resolver of the whole process: tests using it must not be parallel.
func Resolvers(t *testing.T, f func(t *testing.T)) {
	for _, on := range []bool{true, false} {
		name := "openat2"
		if !on {
			name = "walk"
		}
		t.Run(name, func(t *testing.T) {
			was := beneath.SetOpenat2(on)
			defer beneath.SetOpenat2(was)
			f(t)
		})
	}
}
