package kvapi

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"sync"
)

// bodyFault remembers the first error a request body produced, across every
// body GetBody made for the request, so that a failed round trip can be told
// apart from a network failure. The transport reads bodies on its own
// goroutine, hence the lock.
type bodyFault struct {
	mu  sync.Mutex
	err error
}

func (f *bodyFault) set(err error) error {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
	return err
}

func (f *bodyFault) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// multipartFrame is the multipart/form-data envelope around a streamed value:
// the optional metadata part first, then the value part's header (head), the
// value bytes, and the closing boundary (tail). Putting the value last means
// only it has to be streamed, and the closing boundary, without which the
// server cannot accept the form, is written only after the value proved to
// have exactly the announced size.
type multipartFrame struct {
	contentType string
	head, tail  []byte
}

func newMultipartFrame(metadata []byte) (multipartFrame, error) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	if metadata != nil {
		h := make(textproto.MIMEHeader)
		h.Set("Content-Disposition", `form-data; name="metadata"`)
		h.Set("Content-Type", "application/json")
		pw, err := w.CreatePart(h)
		if err != nil {
			return multipartFrame{}, err
		}
		if _, err := pw.Write(metadata); err != nil {
			return multipartFrame{}, err
		}
	}
	// A plain form field, no filename, as `curl -F value=...` and wrangler send.
	if _, err := w.CreateFormField("value"); err != nil {
		return multipartFrame{}, err
	}
	headLen := buf.Len()
	if err := w.Close(); err != nil {
		return multipartFrame{}, err
	}
	all := buf.Bytes()
	return multipartFrame{
		contentType: w.FormDataContentType(),
		head:        all[:headLen:headLen],
		tail:        all[headLen:],
	}, nil
}

func (f multipartFrame) length(valueSize int64) int64 {
	return int64(len(f.head)) + valueSize + int64(len(f.tail))
}

// putBody streams head, exactly size bytes of the value, then tail. A value
// reader that ends early or has bytes left over fails the body before the
// tail, so the request is cut off instead of carrying a corrupt value.
//
// The transport may Close a body from another goroutine while it is being
// read, so Read never touches value's lifetime and Close runs once.
type putBody struct {
	head, tail []byte
	value      io.ReadCloser
	valueDone  bool
	remain     int64
	fault      *bodyFault
	err        error
	closeOnce  sync.Once
	closeErr   error
}

func (b *putBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	if !b.valueDone {
		if b.remain == 0 {
			if err := b.checkExhausted(); err != nil {
				return 0, b.fail(err)
			}
			b.valueDone = true
		} else {
			if int64(len(p)) > b.remain {
				p = p[:b.remain]
			}
			n, err := b.value.Read(p)
			b.remain -= int64(n)
			switch {
			case err == io.EOF && b.remain > 0:
				return n, b.fail(fmt.Errorf("%w: ended %d bytes early", ErrValueSizeMismatch, b.remain))
			case err != nil && err != io.EOF:
				return n, b.fail(err)
			}
			return n, nil
		}
	}
	if len(b.tail) > 0 {
		n := copy(p, b.tail)
		b.tail = b.tail[n:]
		return n, nil
	}
	return 0, io.EOF
}

// checkExhausted makes sure the value reader has nothing beyond its size.
func (b *putBody) checkExhausted() error {
	var one [1]byte
	for range 100 {
		n, err := b.value.Read(one[:])
		if n > 0 {
			return fmt.Errorf("%w: more bytes than its size", ErrValueSizeMismatch)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

func (b *putBody) fail(err error) error {
	b.err = b.fault.set(err)
	return err
}

func (b *putBody) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.value.Close() })
	return b.closeErr
}
