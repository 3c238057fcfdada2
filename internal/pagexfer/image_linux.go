package pagexfer

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
)

// ImageSink writes one pagemap's pages into an images directory
// (pagemap-*.img and pages-<id>.img). Data moves without a buffer of
// godwit where the kernel allows: a pipe is spliced into the pages file
// (the dumper's vmsplice path: target pages → pipe → file, one copy), a
// *Chunk is written directly, other files (sockets …) are spliced by
// os.File.ReadFrom, anything else is copied.
type ImageSink struct {
	w   *images.PageWriter
	fd  int
	err error
}

var _ Sink = (*ImageSink)(nil)

// NewImageSink creates pagemapName (images.PagemapImg / PagemapShmemImg)
// and pages-<pagesID>.img in d.
func NewImageSink(d *images.Dir, pagemapName string, pagesID uint32) (*ImageSink, error) {
	w, err := images.CreatePages(d, pagemapName, pagesID)
	if err != nil {
		return nil, err
	}
	return &ImageSink{w: w, fd: int(w.PagesFile().Fd())}, nil
}

// AddPages implements Sink.
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
	case *Chunk:
		if b := r.next(n); len(b) != n {
			err = fmt.Errorf("source holds %d of %d bytes", len(b), n)
		} else {
			err = writeAll(s.fd, b)
		}
	case *os.File:
		var st unix.Stat_t
		if err = unix.Fstat(int(r.Fd()), &st); err != nil {
			err = fmt.Errorf("fstat source: %w", err)
		} else if st.Mode&unix.S_IFMT == unix.S_IFIFO {
			err = spliceAll(int(r.Fd()), s.fd, n)
		} else {
			err = s.copy(s.w.ReadFrom, io.LimitReader(r, int64(n)), n)
		}
	default:
		err = s.copy(s.w.ReadFrom, io.LimitReader(src, int64(n)), n)
	}
	if err != nil {
		return s.fail(fmt.Errorf("pages at %#x: %w", vaddr, err))
	}
	return nil
}

func (s *ImageSink) copy(readFrom func(io.Reader) (int64, error), src io.Reader, n int) error {
	got, err := readFrom(src)
	if err == nil && got < int64(n) {
		err = fmt.Errorf("source ended after %d of %d bytes", got, n)
	}
	return err
}

// Hole implements Sink.
func (s *ImageSink) Hole(vaddr, nr uint64) error {
	if s.err != nil {
		return s.err
	}
	return s.w.Add(vaddr, nr, images.PageInParent)
}

// Close implements Sink.
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

// ImageSource serves the present pages of a pagemap/pages image pair.
type ImageSource struct {
	pr     *images.PageReader
	i      int
	cur    images.PageRange
	done   int64
	clip   bool
	lo, hi uint64
}

var (
	_ Source   = (*ImageSource)(nil)
	_ FileRuns = (*ImageSource)(nil)
)

// NewImageSource returns a source over pr's present ranges.
func NewImageSource(pr *images.PageReader) *ImageSource { return &ImageSource{pr: pr} }

// NewImageSourceRange returns a source over pr's present ranges clipped
// to the addresses [lo, hi): for a shared-memory object, whose pagemap's
// addresses are offsets in it, the part one mapping shows.
func NewImageSourceRange(pr *images.PageReader, lo, hi uint64) *ImageSource {
	return &ImageSource{pr: pr, clip: true, lo: lo, hi: hi}
}

// Next implements Source.
func (s *ImageSource) Next() (uint64, uint64, error) {
	for s.i < s.pr.Len() {
		p := s.pr.Range(s.i)
		s.i++
		if !p.Present() {
			continue
		}
		s.cur, s.done = p, 0
		if !s.clip {
			return p.Vaddr, p.NrPages, nil
		}
		lo, hi := max(p.Vaddr, s.lo), min(p.End(), s.hi)
		if lo >= hi {
			continue
		}
		s.done = int64(lo - p.Vaddr) // skip the head outside the range
		s.cur.NrPages = (hi - p.Vaddr) / images.PageSize
		return lo, (hi - lo) / images.PageSize, nil
	}
	return 0, 0, io.EOF
}

// Read implements Source.
func (s *ImageSource) Read(b []byte) (int, error) {
	left := int64(s.cur.NrPages*images.PageSize) - s.done
	if left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > left {
		b = b[:left]
	}
	n, err := s.pr.ReadAt(b, s.cur.Vaddr+uint64(s.done))
	s.done += int64(n)
	return n, err
}

// RunFile implements FileRuns.
func (s *ImageSource) RunFile() (*os.File, int64) {
	return s.pr.PagesFile(), s.cur.Offset + s.done
}
