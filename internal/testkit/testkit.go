// Package testkit holds the test doubles that more than one package's tests
// need. Only tests import it; it imports nothing of kvsync but the KV
// interface (kvapi) and the opener (internal/beneath), so any package whose
// tests use it stays free of import cycles, except the in-package tests of
// those two, which import nothing of kvsync.
package testkit

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer that is safe for concurrent use: a log destination
// or a process's output that a test reads while it is still being written.
// The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
