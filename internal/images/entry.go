package images

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"google.golang.org/protobuf/proto"
)

// MaxEntrySize bounds one entry (and one payload read through ReadPayload's
// callers): a size field beyond it is corruption, never an allocation.
const MaxEntrySize = 64 << 20

// ErrFormat is matched (errors.Is) by every FormatError.
var ErrFormat = errors.New("bad image format")

// FormatError reports a corrupt, truncated or foreign image: which file, at
// which byte offset, and what was wrong.
type FormatError struct {
	File   string
	Offset int64
	Msg    string
	Err    error // underlying cause, if any
}

func (e *FormatError) Error() string {
	s := fmt.Sprintf("images: %s: offset %d: %s", e.File, e.Offset, e.Msg)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Is(target error) bool { return target == ErrFormat }
func (e *FormatError) Unwrap() error        { return e.Err }

func magicName(v uint32) string {
	if n, ok := magics.ByValue[uint64(v)]; ok {
		return fmt.Sprintf("%s (%#x)", n, v)
	}
	return fmt.Sprintf("%#x", v)
}

// EntryWriter streams entries into one image file: magic header first, then
// u32 size + message per entry. It buffers, never holds more than one entry.
type EntryWriter struct {
	name string
	kind Kind
	f    *os.File // closed by Close when the writer opened it
	w    *bufio.Writer
	buf  []byte
	n    int   // entries written
	off  int64 // bytes written
	err  error
}

// CreateImage creates (truncates) name in d and writes its header. The image
// type comes from the name.
func (d *Dir) CreateImage(name string) (*EntryWriter, error) {
	k, err := KindOf(name)
	if err != nil {
		return nil, err
	}
	if k.Raw() {
		return nil, fmt.Errorf("images: %s is a raw image, not entries", name)
	}
	f, err := d.Create(name)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	w := newEntryWriter(f, name, k)
	w.f = f
	if err := w.header(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// NewEntryWriter writes an image of kind k to w (a socket, a pipe, a
// buffer). name is only used in errors.
func NewEntryWriter(w io.Writer, name string, k Kind) (*EntryWriter, error) {
	if k.Raw() {
		return nil, fmt.Errorf("images: %s is a raw image, not entries", name)
	}
	ew := newEntryWriter(w, name, k)
	if err := ew.header(); err != nil {
		return nil, err
	}
	return ew, nil
}

func newEntryWriter(w io.Writer, name string, k Kind) *EntryWriter {
	return &EntryWriter{name: name, kind: k, w: bufio.NewWriterSize(w, 64<<10)}
}

func (w *EntryWriter) header() error {
	var hdr [8]byte
	b := hdr[:0]
	switch w.kind.Prefix {
	case PrefixCommon:
		b = binary.LittleEndian.AppendUint32(b, magicCommon)
	case PrefixService:
		b = binary.LittleEndian.AppendUint32(b, magicSvc)
	}
	b = binary.LittleEndian.AppendUint32(b, w.kind.Value)
	return w.put(b)
}

func (w *EntryWriter) put(b []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.w.Write(b); err != nil {
		w.err = fmt.Errorf("images: write %s: %w", w.name, err)
		return w.err
	}
	w.off += int64(len(b))
	return nil
}

// Name is the image file name.
func (w *EntryWriter) Name() string { return w.name }

// Write appends one entry. Its type must be the image's (core_entry in a
// core image ...); proto2 required fields must be set.
func (w *EntryWriter) Write(m proto.Message) error {
	if w.err != nil {
		return w.err
	}
	if !w.kind.accepts(w.n, m) {
		return fmt.Errorf("images: %s: entry %d is %s, want %s", w.name, w.n,
			proto.MessageName(m), proto.MessageName(w.kind.typeFor(w.n)))
	}
	b, err := proto.MarshalOptions{}.MarshalAppend(append(w.buf[:0], 0, 0, 0, 0), m)
	if err != nil {
		return fmt.Errorf("images: %s: entry %d: %w", w.name, w.n, err)
	}
	if len(b)-4 > MaxEntrySize {
		return fmt.Errorf("images: %s: entry %d is %d bytes, over the %d limit", w.name, w.n, len(b)-4, MaxEntrySize)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	w.buf = b
	if err := w.put(b); err != nil {
		return err
	}
	w.n++
	return nil
}

// WritePayload appends raw bytes after an entry, for the images that carry
// data beside their messages (pipes-data, sk-queues, tcp-stream, ...).
func (w *EntryWriter) WritePayload(p []byte) error { return w.put(p) }

// Flush writes buffered entries to the underlying writer.
func (w *EntryWriter) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.w.Flush(); err != nil {
		w.err = fmt.Errorf("images: write %s: %w", w.name, err)
	}
	return w.err
}

// Close flushes and, if the writer created the file, closes it.
func (w *EntryWriter) Close() error {
	err := w.Flush()
	if w.f != nil {
		if cerr := w.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("images: close %s: %w", w.name, cerr)
		}
		w.f = nil
	}
	if w.err == nil {
		w.err = errors.New("images: " + w.name + ": writer closed")
	}
	return err
}

// EntryReader reads one entry at a time from an image file, checking the
// magic, bounding every size by the bytes left and by MaxEntrySize.
type EntryReader struct {
	name string
	kind Kind
	f    *os.File
	r    *bufio.Reader
	size int64 // file size, -1 if unknown
	off  int64
	n    int
	buf  []byte
}

// OpenImage opens name in d and checks its header against the type its name
// says. Names outside CRIU's table are accepted with any known magic.
func (d *Dir) OpenImage(name string) (*EntryReader, error) {
	f, err := d.OpenRead(name)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("images: %w", err)
	}
	r, err := NewEntryReader(f, name, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	r.f = f
	return r, nil
}

// NewEntryReader reads an image from r. size is the number of bytes r holds
// (-1 if unknown); name chooses the expected kind (a name CRIU does not use
// accepts any known magic) and labels errors.
func NewEntryReader(r io.Reader, name string, size int64) (*EntryReader, error) {
	er := &EntryReader{name: name, r: bufio.NewReaderSize(r, 64<<10), size: size}
	want, kerr := KindOf(name)
	if kerr == nil && want.Raw() {
		return nil, fmt.Errorf("images: %s is a raw image, not entries", name)
	}
	var w [4]byte
	if err := er.full(w[:], "header"); err != nil {
		return nil, err
	}
	v := binary.LittleEndian.Uint32(w[:])
	pfx := PrefixNone
	if v == magicCommon || v == magicSvc {
		pfx = PrefixCommon
		if v == magicSvc {
			pfx = PrefixService
		}
		if err := er.full(w[:], "header"); err != nil {
			return nil, err
		}
		v = binary.LittleEndian.Uint32(w[:])
	}
	if kerr == nil {
		if v != want.Value {
			return nil, er.errAt(er.off-4, fmt.Sprintf("wrong magic %s, want %s", magicName(v), magicName(want.Value)), nil)
		}
		if pfx != want.Prefix {
			return nil, er.errAt(0, fmt.Sprintf("wrong header for %s (prefix %d, want %d)", want.Magic, pfx, want.Prefix), nil)
		}
		er.kind = want
		return er, nil
	}
	n, ok := magics.ByValue[uint64(v)]
	if !ok || n == "IMG_COMMON" || n == "IMG_SERVICE" {
		return nil, er.errAt(er.off-4, fmt.Sprintf("unknown magic %#x", v), nil)
	}
	k, err := KindByMagic(n, pfx)
	if err != nil {
		return nil, er.errAt(er.off-4, err.Error(), nil)
	}
	er.kind = k
	return er, nil
}

func (r *EntryReader) errAt(off int64, msg string, err error) error {
	return &FormatError{File: r.name, Offset: off, Msg: msg, Err: err}
}

// full reads exactly len(p) bytes or fails naming what was being read.
func (r *EntryReader) full(p []byte, what string) error {
	n, err := io.ReadFull(r.r, p)
	r.off += int64(n)
	if err == nil {
		return nil
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.errAt(r.off-int64(n), fmt.Sprintf("truncated %s (need %d bytes, have %d)", what, len(p), n), nil)
	}
	return fmt.Errorf("images: read %s: %w", r.name, err)
}

// Kind is the image's type, as read from its header.
func (r *EntryReader) Kind() Kind { return r.kind }

// Name is the image file name.
func (r *EntryReader) Name() string { return r.name }

// Offset is the number of bytes consumed so far.
func (r *EntryReader) Offset() int64 { return r.off }

// Next reads the next entry into m. It returns io.EOF (unwrapped) at a clean
// end of file, a *FormatError for anything malformed.
func (r *EntryReader) Next(m proto.Message) error {
	if m == nil {
		return fmt.Errorf("images: %s: nil message", r.name)
	}
	start := r.off
	var w [4]byte
	n, err := io.ReadFull(r.r, w[:])
	r.off += int64(n)
	if err == io.EOF {
		return io.EOF
	}
	if err == io.ErrUnexpectedEOF {
		return r.errAt(start, fmt.Sprintf("truncated entry size (need 4 bytes, have %d)", n), nil)
	}
	if err != nil {
		return fmt.Errorf("images: read %s: %w", r.name, err)
	}
	size := int64(binary.LittleEndian.Uint32(w[:]))
	if size > MaxEntrySize {
		return r.errAt(start, fmt.Sprintf("entry size %d over the %d limit", size, MaxEntrySize), nil)
	}
	if r.size >= 0 && size > r.size-r.off {
		return r.errAt(start, fmt.Sprintf("truncated entry (need %d bytes, have %d)", size, max(r.size-r.off, 0)), nil)
	}
	if !r.kind.accepts(r.n, m) {
		return fmt.Errorf("images: %s: entry %d is %s, not %s", r.name, r.n,
			proto.MessageName(r.kind.typeFor(r.n)), proto.MessageName(m))
	}
	b, err := r.readEntry(int(size))
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			fe.Offset = start
			fe.Msg = fmt.Sprintf("truncated entry (need %d bytes, have %d)", size, r.off-start-4)
		}
		return err
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return r.errAt(start, fmt.Sprintf("bad %s", proto.MessageName(m)), err)
	}
	r.n++
	return nil
}

// readEntry reads size bytes into the reusable buffer. When the stream's
// length is unknown (a socket), the buffer grows only as data arrives, so a
// lying size field costs at most what the peer really sent.
func (r *EntryReader) readEntry(size int) ([]byte, error) {
	if cap(r.buf) >= size || r.size >= 0 {
		if cap(r.buf) < size {
			r.buf = make([]byte, size)
		}
		b := r.buf[:size]
		return b, r.full(b, "entry")
	}
	const step = 1 << 20
	b := r.buf[:0]
	for len(b) < size {
		n := min(size-len(b), step)
		b = slices.Grow(b, n)[:len(b)+n]
		if err := r.full(b[len(b)-n:], "entry"); err != nil {
			return nil, err
		}
	}
	r.buf = b
	return b, nil
}

// ReadPayload reads the raw bytes that follow an entry in images carrying
// data (pipes-data, sk-queues, ...).
func (r *EntryReader) ReadPayload(p []byte) error {
	if r.size >= 0 && int64(len(p)) > r.size-r.off {
		return r.errAt(r.off, fmt.Sprintf("truncated payload (need %d bytes, have %d)", len(p), max(r.size-r.off, 0)), nil)
	}
	return r.full(p, "payload")
}

// Remaining is the number of bytes left in the file, or -1 when the
// stream's length is unknown (CRIU's ghost-file keeps a small deleted
// file's contents as the rest of the image, with no length).
func (r *EntryReader) Remaining() int64 {
	if r.size < 0 {
		return -1
	}
	return r.size - r.off
}

// SkipPayload skips n raw bytes.
func (r *EntryReader) SkipPayload(n int64) error {
	if n < 0 || (r.size >= 0 && n > r.size-r.off) {
		return r.errAt(r.off, fmt.Sprintf("truncated payload (need %d bytes, have %d)", n, max(r.size-r.off, 0)), nil)
	}
	d, err := r.r.Discard(int(n))
	r.off += int64(d)
	if err != nil {
		return r.errAt(r.off, fmt.Sprintf("truncated payload (need %d bytes, have %d)", n, d), nil)
	}
	return nil
}

// Close closes the file if the reader opened it.
func (r *EntryReader) Close() error {
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

// newFor returns a fresh message for entry i: of T's type when T is a
// generated message pointer (a nil one still knows its type), of the
// image's own type when T is an interface such as proto.Message.
func newFor[T proto.Message](r *EntryReader, i int) (T, error) {
	var zero T
	if any(zero) != nil {
		return zero.ProtoReflect().Type().New().Interface().(T), nil
	}
	if t := r.kind.typeFor(i); t != nil {
		if m, ok := t.ProtoReflect().Type().New().Interface().(T); ok {
			return m, nil
		}
	}
	return zero, fmt.Errorf("images: %s: no message type for entry %d", r.name, i)
}

// Write creates name in d holding entries.
func Write[T proto.Message](d *Dir, name string, entries ...T) error {
	w, err := d.CreateImage(name)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := w.Write(e); err != nil {
			w.Close()
			return err
		}
	}
	return w.Close()
}

// ReadAll reads every entry of name. For images that may be large (pagemap)
// prefer an EntryReader or the page API.
func ReadAll[T proto.Message](d *Dir, name string) ([]T, error) {
	r, err := d.OpenImage(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out []T
	for {
		m, err := newFor[T](r, r.n)
		if err != nil {
			return nil, err
		}
		err = r.Next(m)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
}

// ReadOne reads an image that holds exactly one entry (core, mm, fs, ids,
// creds, inventory, cpuinfo, stats).
func ReadOne[T proto.Message](d *Dir, name string) (T, error) {
	var zero T
	r, err := d.OpenImage(name)
	if err != nil {
		return zero, err
	}
	defer r.Close()
	m, err := newFor[T](r, 0)
	if err != nil {
		return zero, err
	}
	if err := r.Next(m); err != nil {
		if err == io.EOF {
			return zero, r.errAt(r.off, "no entry", nil)
		}
		return zero, err
	}
	off := r.off
	extra, _ := newFor[T](r, 1)
	if err := r.Next(extra); err != io.EOF {
		if err == nil {
			return zero, r.errAt(off, "more than one entry", nil)
		}
		return zero, err
	}
	return m, nil
}
