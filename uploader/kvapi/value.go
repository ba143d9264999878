package kvapi

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// Bytes returns a Value holding b. b must not change while a request that
// uses the Value may still be sent.
func Bytes(b []byte) Value { return bytesValue(b) }

type bytesValue []byte

func (v bytesValue) Size() int64 { return int64(len(v)) }

func (v bytesValue) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(v)), nil
}

// File returns a Value that reads the regular file at path. Its size is
// recorded now; every Open reopens the file, so each attempt of a request
// resends the whole content. A reader fails with ErrValueSizeMismatch when the
// file turns out shorter or longer than the recorded size, so a file that
// changed after it was measured is never sent as a truncated or spliced value.
func File(path string) (Value, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("kv value %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return &fileValue{path: path, size: fi.Size()}, nil
}

type fileValue struct {
	path string
	size int64
}

func (f *fileValue) Size() int64 { return f.size }

func (f *fileValue) Open() (io.ReadCloser, error) {
	fh, err := os.Open(f.path)
	if err != nil {
		return nil, err
	}
	return &sizedFile{f: fh, path: f.path, size: f.size, remain: f.size}, nil
}

func (f *fileValue) String() string { return fmt.Sprintf("file %s (%d bytes)", f.path, f.size) }

// sizedFile yields exactly size bytes of a file or an error.
type sizedFile struct {
	f      *os.File
	path   string
	size   int64
	remain int64
	probed bool
}

func (s *sizedFile) Read(p []byte) (int, error) {
	if s.remain == 0 {
		if !s.probed {
			s.probed = true
			var one [1]byte
			n, err := io.ReadFull(s.f, one[:])
			if n > 0 {
				return 0, fmt.Errorf("%w: file %s grew beyond %d bytes", ErrValueSizeMismatch, s.path, s.size)
			}
			if err != io.EOF {
				return 0, err
			}
		}
		return 0, io.EOF
	}
	if int64(len(p)) > s.remain {
		p = p[:s.remain]
	}
	n, err := s.f.Read(p)
	s.remain -= int64(n)
	if err == io.EOF && s.remain > 0 {
		return n, fmt.Errorf("%w: file %s shrank to %d of %d bytes", ErrValueSizeMismatch, s.path, s.size-s.remain, s.size)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

func (s *sizedFile) Close() error { return s.f.Close() }
