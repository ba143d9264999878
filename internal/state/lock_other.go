//go:build !unix

package state

import (
	"os"
	"time"
)

// lockFile is a no-op where flock does not exist; bbolt's own lock still
// guards the store while it is open.
func lockFile(*os.File, time.Duration) error { return nil }

func unlockFile(*os.File) {}
