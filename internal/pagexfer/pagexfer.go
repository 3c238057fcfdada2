package pagexfer

import (
	"io"
	"os"
)

// Sink receives one pagemap's pages, in ascending address order.
type Sink interface {
	// AddPages records nr pages at vaddr with pagemap flags
	// (images.PagePresent …); with PagePresent, exactly nr pages of data
	// are read from src.
	AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error
	// Hole records nr pages at vaddr kept in the parent images.
	Hole(vaddr, nr uint64) error
	// Close completes the pagemap, or abandons it after an error.
	Close() error
}

// Source yields runs of page data, in any order.
type Source interface {
	// Next moves to the next run and returns its address and number of
	// pages; io.EOF after the last.
	Next() (vaddr, nrPages uint64, err error)
	// Read reads the current run's data (io.EOF at its end).
	Read(p []byte) (int, error)
}

// FileRuns is implemented by sources whose current run is stored in a
// file, so that the target can read it directly.
type FileRuns interface {
	RunFile() (f *os.File, off int64)
}

// Chunk is a loaded batch of page data, consumed in order: an ImageSink
// writes it without a copy.
type Chunk struct {
	b   []byte
	off int
}

// NewChunk wraps b.
func NewChunk(b []byte) Chunk { return Chunk{b: b} }

// next returns up to n bytes and consumes them.
func (c *Chunk) next(n int) []byte {
	if n > len(c.b)-c.off {
		n = len(c.b) - c.off
	}
	p := c.b[c.off : c.off+n]
	c.off += n
	return p
}

// Take returns up to n bytes and consumes them, without a copy: a sink
// that inspects the pages (the page server client's zero and duplicate
// check) reads them in place.
func (c *Chunk) Take(n int) []byte { return c.next(n) }

// Read implements io.Reader.
func (c *Chunk) Read(p []byte) (int, error) {
	if c.off >= len(c.b) {
		return 0, io.EOF
	}
	n := copy(p, c.b[c.off:])
	c.off += n
	return n, nil
}
