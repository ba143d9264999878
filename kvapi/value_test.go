package kvapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

func TestBytesValue(t *testing.T) {
	b := []byte("hello")
	v := Bytes(b)
	if v.Size() != 5 {
		t.Errorf("Size %d", v.Size())
	}
	for range 2 {
		rc, err := v.Open()
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("read %q, %v", got, err)
		}
	}
}

// fileValue is Sized over the file at path, reopened for each attempt.
func fileValue(t *testing.T, path string) Value {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return Sized(path, fi.Size(), func() (io.ReadCloser, error) { return os.Open(path) })
}

func TestSizedValue(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	content := bytes.Repeat([]byte("0123456789"), 10000)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	v := fileValue(t, path)
	if v.Size() != int64(len(content)) {
		t.Fatalf("Size %d", v.Size())
	}
	read := func() ([]byte, error) {
		rc, err := v.Open()
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
	for i := range 2 {
		got, err := read()
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("read %d: %d bytes, %v", i, len(got), err)
		}
	}

	if err := os.WriteFile(path, append(content, 'x'), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := read(); !errors.Is(err, ErrValueSizeMismatch) {
		t.Errorf("grown file: %v, want ErrValueSizeMismatch", err)
	}
	if err := os.WriteFile(path, content[:len(content)-1], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := read(); !errors.Is(err, ErrValueSizeMismatch) {
		t.Errorf("shrunk file: %v, want ErrValueSizeMismatch", err)
	}
	os.Remove(path)
	if _, err := read(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removed file: %v", err)
	}
}

// TestPutFileThatChanged: a file rewritten between measuring and uploading
// is refused with a ValueError, and nothing complete reaches the server.
func TestPutFileThatChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, bytes.Repeat([]byte("a"), 100000), 0o600); err != nil {
		t.Fatal(err)
	}
	v := fileValue(t, path)
	var complete atomic.Int64
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err == nil {
			complete.Add(1)
		}
		writeOK(w, "null")
	})
	if err := c.PutValue(context.Background(), testNS, "f", v, PutOptions{}); err != nil {
		t.Fatalf("unchanged file: %v", err)
	}
	for _, size := range []int{99999, 100001} {
		if err := os.WriteFile(path, bytes.Repeat([]byte("b"), size), 0o600); err != nil {
			t.Fatal(err)
		}
		err := c.PutValue(context.Background(), testNS, "f", v, PutOptions{})
		var ve *ValueError
		if !errors.As(err, &ve) || !errors.Is(err, ErrValueSizeMismatch) {
			t.Errorf("file now %d bytes: %v, want a ValueError", size, err)
		}
	}
	c.hc.CloseIdleConnections()
	if n := complete.Load(); n != 1 {
		t.Errorf("server received %d complete bodies, want 1", n)
	}
}
