package images

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"google.golang.org/protobuf/proto"
)

// PageSize is the page size of CRIU's x86-64 images.
const PageSize = 4096

// Pagemap entry flags, as CRIU defines them (criu/include/pagemap.h).
const (
	PageInParent = 1 << 0 // PE_PARENT: the pages are in the parent images
	PageLazy     = 1 << 1 // PE_LAZY: may be served lazily (userfaultfd)
	PagePresent  = 1 << 2 // PE_PRESENT: the data is in pages-<id>.img
)

const pageFlagsMask = PageInParent | PageLazy | PagePresent

// PageRange is one pagemap entry: nr pages from Vaddr. Offset is where its
// data starts in the pages file (meaningful when Flags has PagePresent).
type PageRange struct {
	Vaddr   uint64
	NrPages uint64
	Flags   uint32
	Offset  int64
}

// End is the address just past the range.
func (p PageRange) End() uint64 { return p.Vaddr + p.NrPages*PageSize }

// Present reports whether the range's data is in the pages file.
func (p PageRange) Present() bool { return p.Flags&PagePresent != 0 }

// PageWriter writes a pagemap image and its pages-<id>.img. The caller
// announces each range with Add, then (for present ranges) writes exactly
// its bytes through Write, ReadFrom or PagesFile, in pagemap order.
// Adjacent ranges with equal flags become one entry, as in CRIU.
type PageWriter struct {
	pm      *EntryWriter
	pages   *os.File
	pname   string
	pending PageRange
	has     bool
	lastEnd uint64
	want    int64 // bytes the present ranges announced so far
	written int64 // bytes that went through Write/ReadFrom
	direct  bool  // PagesFile was handed out: trust the file size
	closed  bool
}

// CreatePages creates pagemapName (pagemap-<pid>.img or
// pagemap-shmem-<id>.img) with head {pages_id} and pages-<pagesID>.img.
func CreatePages(d *Dir, pagemapName string, pagesID uint32) (*PageWriter, error) {
	k, err := KindOf(pagemapName)
	if err != nil {
		return nil, err
	}
	if k.Magic != "PAGEMAP" {
		return nil, fmt.Errorf("images: %s is not a pagemap image", pagemapName)
	}
	pname := PagesImg(pagesID)
	// Read and write: CopyWithin reads pages written before.
	pages, err := d.OpenFile(pname, os.O_RDWR|os.O_CREATE|os.O_TRUNC, FilePerm)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	pm, err := d.CreateImage(pagemapName)
	if err != nil {
		pages.Close()
		return nil, err
	}
	if err := pm.Write(&pagemap.PagemapHead{PagesId: proto.Uint32(pagesID)}); err != nil {
		pm.Close()
		pages.Close()
		return nil, err
	}
	return &PageWriter{pm: pm, pages: pages, pname: pname}, nil
}

// Add records nrPages pages at vaddr with flags. Ranges must come in
// ascending address order and not overlap; PagePresent and PageInParent
// exclude each other.
func (w *PageWriter) Add(vaddr, nrPages uint64, flags uint32) error {
	switch {
	case w.closed:
		return errors.New("images: page writer closed")
	case vaddr%PageSize != 0:
		return fmt.Errorf("images: pagemap: vaddr %#x not page aligned", vaddr)
	case nrPages == 0 || nrPages > (^uint64(0)-vaddr)/PageSize:
		return fmt.Errorf("images: pagemap: bad range %#x + %d pages", vaddr, nrPages)
	case flags&^pageFlagsMask != 0 || flags&(PagePresent|PageInParent) == PagePresent|PageInParent:
		return fmt.Errorf("images: pagemap: bad flags %#x", flags)
	case w.has && vaddr < w.lastEnd:
		return fmt.Errorf("images: pagemap: range %#x below previous end %#x", vaddr, w.lastEnd)
	}
	if flags&PagePresent != 0 {
		w.want += int64(nrPages * PageSize)
	}
	end := vaddr + nrPages*PageSize
	if w.has && w.pending.End() == vaddr && w.pending.Flags == flags {
		w.pending.NrPages += nrPages
	} else {
		if w.has {
			if err := w.flushPending(); err != nil {
				return err
			}
		}
		w.pending = PageRange{Vaddr: vaddr, NrPages: nrPages, Flags: flags}
		w.has = true
	}
	w.lastEnd = end
	return nil
}

func (w *PageWriter) flushPending() error {
	p := w.pending
	// CRIU 4.x reads nr_pages (field 5); CRIU 3.x and its crit only know
	// field 2 (now compat_nr_pages). Fill both while the count fits.
	compat := uint32(0)
	if p.NrPages <= 1<<32-1 {
		compat = uint32(p.NrPages)
	}
	return w.pm.Write(&pagemap.PagemapEntry{
		Vaddr:         proto.Uint64(p.Vaddr),
		CompatNrPages: proto.Uint32(compat),
		Flags:         proto.Uint32(p.Flags),
		NrPages:       proto.Uint64(p.NrPages),
	})
}

// Write appends page data to the pages file.
func (w *PageWriter) Write(p []byte) (int, error) {
	n, err := w.pages.Write(p)
	w.written += int64(n)
	if err != nil {
		err = fmt.Errorf("images: write %s: %w", w.pname, err)
	}
	return n, err
}

// ReadFrom appends page data from r (the kernel splices from sockets and
// pipes, and copy_file_range's from files, when r allows it; wrap r in an
// io.LimitReader to take one range).
func (w *PageWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := w.pages.ReadFrom(r)
	w.written += n
	if err != nil {
		err = fmt.Errorf("images: write %s: %w", w.pname, err)
	}
	return n, err
}

// PagesFile is the pages file, for splice/vmsplice/pwrite by the caller.
// Data must land at the file's current offset order; Close then checks the
// file size instead of the bytes counted by Write/ReadFrom.
func (w *PageWriter) PagesFile() *os.File {
	w.direct = true
	return w.pages
}

// Close writes the last entry, checks that the pages file holds exactly the
// announced present pages, and closes both files.
func (w *PageWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	var err error
	if w.has {
		err = w.flushPending()
	}
	if cerr := w.pm.Close(); err == nil {
		err = cerr
	}
	got := w.written
	if w.direct {
		if st, serr := w.pages.Stat(); serr == nil {
			got = st.Size()
		} else if err == nil {
			err = fmt.Errorf("images: %w", serr)
		}
	}
	if err == nil && got != w.want {
		err = fmt.Errorf("images: %s: %d bytes of pages written, pagemap announces %d", w.pname, got, w.want)
	}
	if cerr := w.pages.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("images: close %s: %w", w.pname, cerr)
	}
	return err
}

// Abort closes both files without checks (on an error path).
func (w *PageWriter) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	w.pm.Close()
	w.pages.Close()
}

// PageReader gives the ranges of a pagemap image and reads their data from
// the pages file with pread, so it serves concurrent lookups (restore,
// lazy-pages, page-server GET).
type PageReader struct {
	name    string
	pagesID uint32
	ranges  []PageRange
	pages   *os.File
	psize   int64
}

// OpenPages reads pagemapName and opens its pages file. It checks that the
// ranges are ordered, don't overlap, and that the pages file is large
// enough for the present ones.
func OpenPages(d *Dir, pagemapName string) (*PageReader, error) {
	r, err := d.OpenImage(pagemapName)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if r.Kind().Magic != "PAGEMAP" {
		return nil, fmt.Errorf("images: %s is not a pagemap image", pagemapName)
	}
	pr, err := readPagemap(r)
	if err != nil {
		return nil, err
	}
	pname := PagesImg(pr.pagesID)
	f, err := d.OpenRead(pname)
	if err != nil {
		return nil, fmt.Errorf("images: %s: %w", pagemapName, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("images: %w", err)
	}
	pr.pages, pr.psize = f, st.Size()
	if need := pr.presentBytes(); need > pr.psize {
		f.Close()
		return nil, &FormatError{File: pname, Offset: pr.psize,
			Msg: fmt.Sprintf("truncated pages (need %d bytes, have %d)", need, pr.psize)}
	}
	return pr, nil
}

// readPagemap parses a pagemap image from r (head, then entries), with
// CRIU's compatibility rules for old images.
func readPagemap(r *EntryReader) (*PageReader, error) {
	var head pagemap.PagemapHead
	if err := r.Next(&head); err != nil {
		if err == io.EOF {
			return nil, r.errAt(r.off, "no pagemap head", nil)
		}
		return nil, err
	}
	pr := &PageReader{name: r.name, pagesID: head.GetPagesId()}
	var off int64
	var lastEnd uint64
	for i := 0; ; i++ {
		at := r.Offset()
		var e pagemap.PagemapEntry
		err := r.Next(&e)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		p := PageRange{Vaddr: e.GetVaddr(), NrPages: e.GetNrPages(), Flags: e.GetFlags()}
		if e.NrPages == nil {
			p.NrPages = uint64(e.GetCompatNrPages())
		}
		if e.GetInParent() {
			p.Flags |= PageInParent
		} else if e.Flags == nil {
			p.Flags = PagePresent
		}
		switch {
		case p.Vaddr%PageSize != 0:
			return nil, r.errAt(at, fmt.Sprintf("pagemap entry %d: vaddr %#x not page aligned", i, p.Vaddr), nil)
		case p.NrPages == 0 || p.NrPages > (^uint64(0)-p.Vaddr)/PageSize:
			return nil, r.errAt(at, fmt.Sprintf("pagemap entry %d: bad range %#x + %d pages", i, p.Vaddr, p.NrPages), nil)
		case p.Flags&^pageFlagsMask != 0:
			return nil, r.errAt(at, fmt.Sprintf("pagemap entry %d: unknown flags %#x", i, p.Flags), nil)
		case i > 0 && p.Vaddr < lastEnd:
			return nil, r.errAt(at, fmt.Sprintf("pagemap entry %d: %#x overlaps or precedes %#x", i, p.Vaddr, lastEnd), nil)
		}
		if p.Present() {
			if p.NrPages > uint64(1<<62-off)/PageSize {
				return nil, r.errAt(at, fmt.Sprintf("pagemap entry %d: pages offset overflows", i), nil)
			}
			p.Offset = off
			off += int64(p.NrPages * PageSize)
		} else {
			p.Offset = -1
		}
		lastEnd = p.End()
		pr.ranges = append(pr.ranges, p)
	}
	return pr, nil
}

// ReadPagemap parses a pagemap image held by r (size bytes; -1 if unknown)
// without opening its pages file: for tools and the page server.
func ReadPagemap(r io.Reader, name string, size int64) (pagesID uint32, ranges []PageRange, err error) {
	er, err := NewEntryReader(r, name, size)
	if err != nil {
		return 0, nil, err
	}
	if er.Kind().Magic != "PAGEMAP" {
		return 0, nil, fmt.Errorf("images: %s is not a pagemap image", name)
	}
	pr, err := readPagemap(er)
	if err != nil {
		return 0, nil, err
	}
	return pr.pagesID, pr.ranges, nil
}

func (r *PageReader) presentBytes() int64 {
	for i := len(r.ranges) - 1; i >= 0; i-- {
		if p := r.ranges[i]; p.Present() {
			return p.Offset + int64(p.NrPages*PageSize)
		}
	}
	return 0
}

// PagesID is the id of the pages file (pages-<id>.img).
func (r *PageReader) PagesID() uint32 { return r.pagesID }

// Len is the number of pagemap entries.
func (r *PageReader) Len() int { return len(r.ranges) }

// Range returns entry i.
func (r *PageReader) Range(i int) PageRange { return r.ranges[i] }

// Ranges iterates the entries in address order.
func (r *PageReader) Ranges() iter.Seq[PageRange] {
	return func(yield func(PageRange) bool) {
		for _, p := range r.ranges {
			if !yield(p) {
				return
			}
		}
	}
}

// Find returns the entry containing vaddr.
func (r *PageReader) Find(vaddr uint64) (PageRange, bool) {
	i := sort.Search(len(r.ranges), func(i int) bool { return r.ranges[i].End() > vaddr })
	if i < len(r.ranges) && r.ranges[i].Vaddr <= vaddr {
		return r.ranges[i], true
	}
	return PageRange{}, false
}

// ReadAt reads len(p) bytes of page data at vaddr. The whole span must lie
// in one present entry (it is an error to read holes or parent pages).
func (r *PageReader) ReadAt(p []byte, vaddr uint64) (int, error) {
	e, ok := r.Find(vaddr)
	if !ok || !e.Present() {
		return 0, fmt.Errorf("images: %s: no page data at %#x", r.name, vaddr)
	}
	if uint64(len(p)) > e.End()-vaddr {
		return 0, fmt.Errorf("images: %s: read %#x+%d crosses entry end %#x", r.name, vaddr, len(p), e.End())
	}
	off := e.Offset + int64(vaddr-e.Vaddr)
	n, err := r.pages.ReadAt(p, off)
	if err != nil {
		if err == io.EOF {
			return n, &FormatError{File: PagesImg(r.pagesID), Offset: off + int64(n),
				Msg: fmt.Sprintf("truncated pages (need %d bytes, have %d)", len(p), n)}
		}
		return n, fmt.Errorf("images: read %s: %w", PagesImg(r.pagesID), err)
	}
	return n, nil
}

// PagesFile is the pages file, for callers that splice or map it. Use
// PageRange.Offset for positions; do not move its file offset concurrently.
func (r *PageReader) PagesFile() *os.File { return r.pages }

// Close closes the pages file.
func (r *PageReader) Close() error {
	if r.pages == nil {
		return nil
	}
	err := r.pages.Close()
	r.pages = nil
	return err
}

// Skip drops the ranges inside [start, end) from r: their data stays in
// the pages file, unread. A range that crosses start or end is refused.
// (The restorer skips the vDSO pages CRIU records: it keeps the running
// kernel's vDSO.)
func (r *PageReader) Skip(start, end uint64) error {
	kept := r.ranges[:0:0]
	for _, p := range r.ranges {
		switch {
		case p.Vaddr >= start && p.End() <= end:
			continue
		case p.Vaddr < end && p.End() > start:
			return fmt.Errorf("images: %s: pages %#x-%#x cross %#x-%#x", r.name, p.Vaddr, p.End(), start, end)
		}
		kept = append(kept, p)
	}
	r.ranges = kept
	return nil
}

// WriteZeros appends n bytes of zeros to the pages file as a hole (the
// file is extended, nothing is written): pages a sender found all zero
// cost no disk either, and read back as zeros.
func (w *PageWriter) WriteZeros(n int64) error {
	if w.closed {
		return errors.New("images: page writer closed")
	}
	if n < 0 || n%PageSize != 0 {
		return fmt.Errorf("images: %d bytes of zeros: not whole pages", n)
	}
	end, err := w.pages.Seek(n, io.SeekCurrent)
	if err == nil {
		err = w.pages.Truncate(end)
	}
	if err != nil {
		return fmt.Errorf("images: zeros in %s: %w", w.pname, err)
	}
	w.written += n
	return nil
}

// CopyWithin appends n bytes read from offset off of the pages file
// itself: a page the sender found identical to one it sent before. The
// source must lie in what was written already.
func (w *PageWriter) CopyWithin(off, n int64) error {
	switch {
	case w.closed:
		return errors.New("images: page writer closed")
	case w.direct:
		return errors.New("images: copy within a pages file written directly")
	case off < 0 || n <= 0 || off%PageSize != 0 || n%PageSize != 0:
		return fmt.Errorf("images: copy %d bytes from %d: not whole pages", n, off)
	case off > w.written || n > w.written-off:
		return fmt.Errorf("images: copy %d bytes from %d of %s: only %d bytes written", n, off, w.pname, w.written)
	}
	// A bounded buffer; the source ends at or before the current end, so
	// the ranges never overlap.
	buf := make([]byte, min(n, 1<<16))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := w.pages.ReadAt(buf[:k], off); err != nil {
			return fmt.Errorf("images: copy within %s: %w", w.pname, err)
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// Written is the number of bytes of pages written so far.
func (w *PageWriter) Written() int64 { return w.written }
