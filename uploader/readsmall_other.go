//go:build !unix

package uploader

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// readSmall reads the whole file at path, refusing more than limit bytes.
func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Size() > limit {
		return nil, errGrew
	}
	buf := make([]byte, fi.Size())
	n, err := io.ReadFull(f, buf)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return buf[:n], nil // it shrank since Stat: what we read is the content now
	case err != nil:
		return nil, err
	}
	var probe [1]byte
	if m, _ := f.Read(probe[:]); m > 0 {
		return nil, errGrew
	}
	return buf, nil
}
