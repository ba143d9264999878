package kvapi

import (
	"bytes"
	"fmt"
	"io"
)

// Bytes returns a Value holding b. b must not change while a request that
// uses the Value may still be sent.
func Bytes(b []byte) Value { return bytesValue(b) }

type bytesValue []byte

func (v bytesValue) Size() int64 { return int64(len(v)) }

func (v bytesValue) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(v)), nil
}

// Sized returns a Value of size bytes that open provides afresh for each
// attempt of a request, so each attempt resends the whole content. name
// is for messages. The reader fails with ErrValueSizeMismatch when what
// open gives turns out shorter or longer than size, so content that changed
// after it was measured is never sent as a truncated or spliced value.
// Where the bytes come from (a file of the synced tree, opened safely) is
// the caller's business: this package never opens a path.
func Sized(name string, size int64, open func() (io.ReadCloser, error)) Value {
	return &sizedValue{name: name, size: size, open: open}
}

type sizedValue struct {
	name string
	size int64
	open func() (io.ReadCloser, error)
}

func (v *sizedValue) Size() int64 { return v.size }

func (v *sizedValue) Open() (io.ReadCloser, error) {
	r, err := v.open()
	if err != nil {
		return nil, err
	}
	return &sizedFile{f: r, path: v.name, size: v.size, remain: v.size}, nil
}

func (v *sizedValue) String() string { return fmt.Sprintf("%s (%d bytes)", v.name, v.size) }

// sizedFile yields exactly size bytes of a reader or an error.
type sizedFile struct {
	f      io.ReadCloser
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
