package pagexfer

import (
	"bytes"
	"io"
	"os"
	"testing"

	"godwit/internal/images"
)

const ps = images.PageSize

func page(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n*ps) }

// Every kind of source lands in the images, and ImageSource (whole and
// clipped) gives back exactly what was written.
func TestImageSinkSource(t *testing.T) {
	d, err := images.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := NewImageSink(d, images.PagemapImg(7), 1)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	go func() { pw.Write(page('p', 2)); pw.Close() }()
	f, err := os.CreateTemp(t.TempDir(), "src")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(page('f', 1))
	f.Seek(0, io.SeekStart)
	c := NewChunk(page('c', 3))
	want := map[uint64]byte{}
	add := func(vaddr, nr uint64, src io.Reader, b byte) {
		t.Helper()
		if err := s.AddPages(vaddr, nr, images.PagePresent, src); err != nil {
			t.Fatal(err)
		}
		for i := uint64(0); i < nr; i++ {
			want[vaddr+i*ps] = b
		}
	}
	add(0x10000, 2, pr, 'p')
	add(0x20000, 1, f, 'f')
	add(0x30000, 3, &c, 'c')
	add(0x40000, 1, bytes.NewReader(page('r', 1)), 'r')
	if err := s.Hole(0x50000, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := images.OpenPages(d, images.PagemapImg(7))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	read := func(src Source) map[uint64]byte {
		got := map[uint64]byte{}
		for {
			va, nr, err := src.Next()
			if err == io.EOF {
				return got
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(src)
			if err != nil || len(b) != int(nr)*ps {
				t.Fatalf("run %#x: %d bytes, %v", va, len(b), err)
			}
			for i := uint64(0); i < nr; i++ {
				got[va+i*ps] = b[i*ps]
			}
		}
	}
	got := read(NewImageSource(r))
	if len(got) != len(want) {
		t.Fatalf("read %d pages, want %d", len(got), len(want))
	}
	for va, b := range want {
		if got[va] != b {
			t.Errorf("page %#x: %q, want %q", va, got[va], b)
		}
	}
	clip := read(NewImageSourceRange(r, 0x11000, 0x31000))
	if len(clip) != 3 || clip[0x11000] != 'p' || clip[0x20000] != 'f' || clip[0x30000] != 'c' {
		t.Errorf("clipped read %v", clip)
	}
}

// A short source fails the sink, naming the address, and Close reports it.
func TestImageSinkShortSource(t *testing.T) {
	d, err := images.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := NewImageSink(d, images.PagemapImg(7), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddPages(0x1000, 2, images.PagePresent, bytes.NewReader(page('x', 1))); err == nil {
		t.Fatal("short source accepted")
	}
	if err := s.Close(); err == nil {
		t.Fatal("Close after a failure succeeded")
	}
}
