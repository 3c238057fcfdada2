package images

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"google.golang.org/protobuf/proto"
)

func pageOf(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n*PageSize) }

func TestPagesRoundTrip(t *testing.T) {
	d := tempDir(t)
	w, err := CreatePages(d, PagemapImg(42), 7)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		vaddr, nr uint64
		flags     uint32
		fill      byte
	}{
		{0x10000, 1, PagePresent | PageLazy, 'a'},
		{0x11000, 2, PagePresent | PageLazy, 'b'}, // merges with the previous
		{0x13000, 1, PagePresent, 'c'},            // same place, other flags: new entry
		{0x20000, 3, PageInParent, 0},
		{0x23000, 1, PageInParent, 0}, // merges
		{0x30000, 2, PagePresent, 'd'},
	}
	for _, s := range steps {
		if err := w.Add(s.vaddr, s.nr, s.flags); err != nil {
			t.Fatal(err)
		}
		if s.flags&PagePresent == 0 {
			continue
		}
		if s.fill == 'c' { // via ReadFrom, as a page server would from a socket
			if _, err := w.ReadFrom(io.LimitReader(bytes.NewReader(pageOf(s.fill, int(s.nr))), int64(s.nr)*PageSize)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := w.Write(pageOf(s.fill, int(s.nr))); err != nil {
			t.Fatal(err)
		}
	}
	// Order and validity checks.
	for _, bad := range []struct {
		v, n uint64
		f    uint32
	}{{0x30000, 1, PagePresent}, {0x40001, 1, PagePresent}, {0x50000, 0, PagePresent}, {0x60000, 1, PagePresent | PageInParent}, {0x60000, 1, 8}} {
		if err := w.Add(bad.v, bad.n, bad.f); err == nil {
			t.Errorf("Add(%#x, %d, %#x) accepted", bad.v, bad.n, bad.f)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	// Generic decoding gives the head and the merged entries.
	entries, err := ReadAll[proto.Message](d, PagemapImg(42))
	if err != nil || len(entries) != 5 {
		t.Fatalf("ReadAll[proto.Message]: %d %v", len(entries), err)
	}
	if h, ok := entries[0].(*pagemap.PagemapHead); !ok || h.GetPagesId() != 7 {
		t.Fatalf("head %v", entries[0])
	}
	r, err := OpenPages(d, PagemapImg(42))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := []PageRange{
		{0x10000, 3, PagePresent | PageLazy, 0},
		{0x13000, 1, PagePresent, 3 * PageSize},
		{0x20000, 4, PageInParent, -1},
		{0x30000, 2, PagePresent, 4 * PageSize},
	}
	if r.PagesID() != 7 || r.Len() != len(want) {
		t.Fatalf("pages id %d, %d entries", r.PagesID(), r.Len())
	}
	i := 0
	for p := range r.Ranges() {
		if p != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, p, want[i])
		}
		i++
	}
	for _, c := range []struct {
		vaddr uint64
		fill  byte
	}{{0x10000, 'a'}, {0x11000, 'b'}, {0x12000, 'b'}, {0x13000, 'c'}, {0x31000, 'd'}} {
		p := make([]byte, PageSize)
		if _, err := r.ReadAt(p, c.vaddr); err != nil || !bytes.Equal(p, pageOf(c.fill, 1)) {
			t.Errorf("page %#x: %q... %v", c.vaddr, p[:4], err)
		}
	}
	if _, err := r.ReadAt(make([]byte, PageSize), 0x21000); err == nil {
		t.Error("read data of a parent page")
	}
	if _, err := r.ReadAt(make([]byte, 2*PageSize), 0x12000); err == nil {
		t.Error("read across an entry end")
	}
	if _, ok := r.Find(0x14000); ok {
		t.Error("found a hole")
	}
	if e, ok := r.Find(0x23fff); !ok || e.Vaddr != 0x20000 {
		t.Errorf("Find(0x23fff) = %+v %v", e, ok)
	}

	// crit decodes it, with the counts in the field it knows.
	img := critShow(t, filepath.Join(d.Path(), PagemapImg(42)))
	es := img["entries"].([]any)
	if img["magic"] != "PAGEMAP" || len(es) != 5 || es[0].(map[string]any)["pages_id"].(float64) != 7 {
		t.Fatalf("crit pagemap: %v", img)
	}
	e1 := es[1].(map[string]any)
	if e1["vaddr"] != "0x10000" || e1["nr_pages"].(float64) != 3 || !strings.Contains(e1["flags"].(string), "PE_LAZY") {
		t.Fatalf("crit entry 1: %v", e1)
	}
}

func TestPagesDirectAndMismatch(t *testing.T) {
	d := tempDir(t)
	w, err := CreatePages(d, PagemapShmemImg(5), 1)
	if err != nil {
		t.Fatal(err)
	}
	w.Add(0, 2, PagePresent)
	f := w.PagesFile()
	if _, err := f.Write(pageOf('z', 2)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Too few bytes for what the pagemap announces.
	w, _ = CreatePages(d, PagemapImg(1), 2)
	w.Add(0x1000, 2, PagePresent)
	w.Write(pageOf('y', 1))
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "pages-2.img: 4096 bytes of pages written, pagemap announces 8192") {
		t.Fatalf("mismatch: %v", err)
	}
	// A pages file cut short after the dump.
	w, _ = CreatePages(d, PagemapImg(3), 3)
	w.Add(0x1000, 2, PagePresent)
	w.Write(pageOf('y', 2))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(d.Path(), PagesImg(3)), PageSize+10)
	if _, err := OpenPages(d, PagemapImg(3)); err == nil || !strings.Contains(err.Error(), "pages-3.img: offset 4106: truncated pages (need 8192 bytes, have 4106)") {
		t.Fatalf("short pages: %v", err)
	}
	os.Remove(filepath.Join(d.Path(), PagesImg(3)))
	if _, err := OpenPages(d, PagemapImg(3)); err == nil || !strings.Contains(err.Error(), "pages-3.img") {
		t.Fatalf("missing pages: %v", err)
	}
	if _, err := CreatePages(d, CoreImg(1), 1); err == nil {
		t.Fatal("CreatePages on a core image name")
	}
}

func TestPagemapCompat(t *testing.T) {
	// Old images: compat_nr_pages only, in_parent instead of flags, no flags.
	d := tempDir(t)
	w, _ := d.CreateImage(PagemapImg(9))
	w.Write(&pagemap.PagemapHead{PagesId: u32(4)})
	w.Write(&pagemap.PagemapEntry{Vaddr: u64(0x1000), CompatNrPages: u32(2)})
	w.Write(&pagemap.PagemapEntry{Vaddr: u64(0x8000), CompatNrPages: u32(1), InParent: proto.Bool(true)})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, _ := d.OpenRead(PagemapImg(9))
	defer f.Close()
	st, _ := f.Stat()
	id, rs, err := ReadPagemap(f, PagemapImg(9), st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if id != 4 || len(rs) != 2 || rs[0] != (PageRange{0x1000, 2, PagePresent, 0}) || rs[1] != (PageRange{0x8000, 1, PageInParent, -1}) {
		t.Fatalf("compat: %d %+v", id, rs)
	}
	// Overlapping entries are corruption.
	w, _ = d.CreateImage(PagemapImg(10))
	w.Write(&pagemap.PagemapHead{PagesId: u32(4)})
	w.Write(&pagemap.PagemapEntry{Vaddr: u64(0x1000), CompatNrPages: u32(2)})
	w.Write(&pagemap.PagemapEntry{Vaddr: u64(0x2000), CompatNrPages: u32(2)})
	w.Close()
	if _, err := OpenPages(d, PagemapImg(10)); err == nil || !strings.Contains(err.Error(), "pagemap-10.img: offset ") || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("overlap: %v", err)
	}
}

func TestFormatStats(t *testing.T) {
	s := &stats.StatsEntry{Dump: &stats.DumpStatsEntry{FreezingTime: u32(12), FrozenTime: u32(3400), MemdumpTime: u32(56),
		MemwriteTime: u32(78), PagesScanned: u64(4096), PagesSkippedParent: u64(0), PagesWritten: u64(17), PagesLazy: u64(0)}}
	got := FormatStats(s)
	want := "Displaying dump stats:\nFreezing time: 12 us\nFrozen time: 3400 us\nMemory dump time: 56 us\nMemory write time: 78 us\n" +
		"Memory pages scanned: 4096 (0x1000)\nMemory pages skipped from parent: 0 (0x0)\nMemory pages written: 17 (0x11)\nLazy memory pages: 0 (0x0)\n"
	if got != want {
		t.Fatalf("dump stats:\n%s\nwant\n%s", got, want)
	}
	r := FormatStats(&stats.StatsEntry{Restore: &stats.RestoreStatsEntry{PagesCompared: u64(0), PagesSkippedCow: u64(0), ForkingTime: u32(5), RestoreTime: u32(9), PagesRestored: u64(3)}})
	if r != "Displaying restore stats:\nPages compared: 0 (0x0)\nPages skipped COW: 0 (0x0)\nPages restored: 3 (0x3)\nRestore time: 9 us\nForking time: 5 us\n" {
		t.Fatalf("restore stats:\n%s", r)
	}
}

func TestNextPagesID(t *testing.T) {
	d := tempDir(t)
	if id := d.NextPagesID(); id != 1 {
		t.Fatalf("first id %d", id)
	}
	writeFile(t, d, PagesImg(2), nil)
	writeFile(t, d, PagesImg(3), nil)
	if id := d.NextPagesID(); id != 4 {
		t.Fatalf("next id %d, want 4 (2 and 3 exist)", id)
	}
}
