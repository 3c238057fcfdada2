package dumper

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/pageserver"
)

// ImageSink writes one pagemap's pages into an images directory, like
// pageserver.LocalSink, but moves data from a pipe with splice(2) (the
// vmsplice path: target pages → pipe → pages file, one copy) and from
// memory chunks without an intermediate buffer.
type ImageSink struct {
	w   *images.PageWriter
	fd  int
	err error
}

var _ pageserver.Sink = (*ImageSink)(nil)

// NewImageSink creates pagemapName and pages-<pagesID>.img in d.
func NewImageSink(d *images.Dir, pagemapName string, pagesID uint32) (*ImageSink, error) {
	w, err := images.CreatePages(d, pagemapName, pagesID)
	if err != nil {
		return nil, err
	}
	return &ImageSink{w: w, fd: int(w.PagesFile().Fd())}, nil
}

// AddPages records the range and, when present, copies nr pages from src:
// a pipe (*os.File) is spliced, a *chunk written directly, anything else
// copied.
func (s *ImageSink) AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error {
	if s.err != nil {
		return s.err
	}
	if err := s.w.Add(vaddr, nr, flags); err != nil {
		return s.fail(err)
	}
	if flags&images.PagePresent == 0 {
		return nil
	}
	n := int(nr * images.PageSize)
	var err error
	switch r := src.(type) {
	case nil:
		err = errors.New("no page source")
	case *os.File:
		err = spliceAll(int(r.Fd()), s.fd, n)
	case *chunk:
		if b := r.next(n); len(b) != n {
			err = fmt.Errorf("source holds %d of %d bytes", len(b), n)
		} else {
			err = writeAll(s.fd, b)
		}
	default:
		var got int64
		got, err = io.Copy(s.w.PagesFile(), io.LimitReader(src, int64(n)))
		if err == nil && got < int64(n) {
			err = fmt.Errorf("source ended after %d of %d bytes", got, n)
		}
	}
	if err != nil {
		return s.fail(fmt.Errorf("pages at %#x: %w", vaddr, err))
	}
	return nil
}

// Hole records pages kept in the parent images.
func (s *ImageSink) Hole(vaddr, nr uint64) error {
	if s.err != nil {
		return s.err
	}
	return s.w.Add(vaddr, nr, images.PageInParent)
}

// Close completes the images, or abandons them after an error.
func (s *ImageSink) Close() error {
	if s.err != nil {
		s.w.Abort()
		return s.err
	}
	return s.w.Close()
}

func (s *ImageSink) fail(err error) error {
	s.err = err
	return err
}

func spliceAll(from, to, n int) error {
	for n > 0 {
		k, err := unix.Splice(from, nil, to, nil, n, unix.SPLICE_F_MOVE)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("splice: %w", err)
		}
		if k == 0 {
			return fmt.Errorf("splice: pipe empty with %d bytes to go", n)
		}
		n -= int(k)
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		k, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write pages: %w", err)
		}
		b = b[k:]
	}
	return nil
}

// chunk is a loaded batch of page data consumed in order.
type chunk struct {
	b   []byte
	off int
}

func (c *chunk) next(n int) []byte {
	if n > len(c.b)-c.off {
		n = len(c.b) - c.off
	}
	p := c.b[c.off : c.off+n]
	c.off += n
	return p
}

func (c *chunk) Read(p []byte) (int, error) {
	if c.off >= len(c.b) {
		return 0, io.EOF
	}
	n := copy(p, c.b[c.off:])
	c.off += n
	return n, nil
}
