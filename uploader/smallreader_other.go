//go:build !linux

package uploader

// smallReader reads the files of one bulk batch. Outside Linux the syscall
// package offers no openat, so each file is read by its path.
type smallReader struct{}

func newSmallReader() *smallReader { return &smallReader{} }

// read returns the content of the file at path, refusing more than limit
// bytes (errGrew). size, the scan's, serves only the Linux reader.
func (r *smallReader) read(path string, size, limit int64) ([]byte, error) {
	return readSmall(path, limit)
}

// close releases nothing here; it exists for the Linux reader.
func (r *smallReader) close() {}
