package pagexfer

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"godwit/internal/images"
)

type ent struct {
	vaddr, nr uint64
	parent    bool
	fill      byte
}

// writeLevel writes pagemap-1.img into dir (linked to parent if not "").
func writeLevel(t *testing.T, dir, parent string, es []ent) {
	t.Helper()
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if parent != "" {
		if err := d.Symlink(parent, ParentLink); err != nil {
			t.Fatal(err)
		}
	}
	s, err := NewImageSink(d, images.PagemapImg(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.parent {
			err = s.Hole(e.vaddr*ps, e.nr)
		} else {
			c := NewChunk(page(e.fill, int(e.nr)))
			err = s.AddPages(e.vaddr*ps, e.nr, images.PagePresent, &c)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// readAll returns page number → fill byte of what a chain resolves.
func readAll(t *testing.T, dir string) map[uint64]byte {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	top, err := images.OpenPages(d, images.PagemapImg(1))
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	c, err := OpenChain(d, images.PagemapImg(1), top)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := c.Source()
	got := map[uint64]byte{}
	for {
		v, n, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n*ps)
		if _, err := io.ReadFull(src, b); err != nil {
			t.Fatal(err)
		}
		for i := uint64(0); i < n; i++ {
			p := b[i*ps : (i+1)*ps]
			if !bytes.Equal(p, page(p[0], 1)) {
				t.Fatalf("page %d mixed", v/ps+i)
			}
			got[v/ps+i] = p[0]
		}
	}
	return got
}

// PARENT entries resolve through two levels, partly overlapping entries
// included; dedup punches exactly the replaced pages and the chain still
// reads the same.
func TestChainResolveDedup(t *testing.T) {
	root := t.TempDir()
	l0, l1, l2 := filepath.Join(root, "l0"), filepath.Join(root, "l1"), filepath.Join(root, "l2")
	writeLevel(t, l0, "", []ent{{vaddr: 10, nr: 10, fill: 'a'}})
	writeLevel(t, l1, "../l0", []ent{{vaddr: 10, nr: 3, parent: true}, {vaddr: 13, nr: 2, fill: 'b'}, {vaddr: 15, nr: 5, parent: true}})
	writeLevel(t, l2, "../l1", []ent{{vaddr: 10, nr: 1, fill: 'c'}, {vaddr: 11, nr: 8, parent: true}, {vaddr: 30, nr: 1, fill: 'd'}})
	want := map[uint64]byte{10: 'c', 11: 'a', 12: 'a', 13: 'b', 14: 'b', 15: 'a', 16: 'a', 17: 'a', 18: 'a', 30: 'd'}
	check := func() {
		got := readAll(t, l2)
		if len(got) != len(want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("page %d: %q, want %q", k, got[k], v)
			}
		}
	}
	check()
	d, err := images.Open(l2, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, err := Dedup(d)
	if err != nil {
		t.Fatal(err)
	}
	// l0 loses page 10 (replaced by l2) and 13, 14 (by l1).
	if st.Pages != 3 || st.Pagemaps != 1 {
		t.Fatalf("dedup: %+v", st)
	}
	check()
	b, err := os.ReadFile(filepath.Join(l0, images.PagesImg(1)))
	if err != nil {
		t.Fatal(err)
	}
	for i, wantZero := range []bool{true, false, false, true, true, false, false, false, false, false} {
		p := b[i*ps : (i+1)*ps]
		if isZero := bytes.Equal(p, make([]byte, ps)); isZero != wantZero {
			t.Fatalf("l0 page %d: zero %v, want %v", 10+i, isZero, wantZero)
		}
	}
}

// A PARENT page no parent holds is refused, naming it.
func TestChainMissingParent(t *testing.T) {
	root := t.TempDir()
	l0, l1 := filepath.Join(root, "l0"), filepath.Join(root, "l1")
	writeLevel(t, l0, "", []ent{{vaddr: 10, nr: 2, fill: 'a'}})
	writeLevel(t, l1, "../l0", []ent{{vaddr: 11, nr: 2, parent: true}})
	d, err := images.Open(l1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	top, err := images.OpenPages(d, images.PagemapImg(1))
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	if _, err := OpenChain(d, images.PagemapImg(1), top); err == nil || !strings.Contains(err.Error(), "0xc000") {
		t.Fatalf("missing parent page: %v", err)
	}
	os.Remove(filepath.Join(l1, ParentLink))
	if _, err := OpenChain(d, images.PagemapImg(1), top); err == nil || !strings.Contains(err.Error(), "parent") {
		t.Fatalf("no parent link: %v", err)
	}
}

// A chain whose parent link comes back into the chain is refused by
// Dedup and CheckParent, and nothing is punched (found in review: dump
// --prev-images-dir ../SAME --auto-dedup emptied the images).
func TestChainCycleRefused(t *testing.T) {
	root := t.TempDir()
	l0, l1 := filepath.Join(root, "l0"), filepath.Join(root, "l1")
	writeLevel(t, l0, "../l1", []ent{{vaddr: 10, nr: 2, fill: 'a'}})
	writeLevel(t, l1, "../l0", []ent{{vaddr: 10, nr: 2, fill: 'b'}})
	before, err := os.ReadFile(filepath.Join(l0, images.PagesImg(1)))
	if err != nil {
		t.Fatal(err)
	}
	d1, err := images.Open(l1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if _, err := Dedup(d1); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("dedup of a cycle: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(l0, images.PagesImg(1))); !bytes.Equal(before, after) {
		t.Fatal("dedup of a cycle punched pages")
	}
	d0, err := images.Open(l0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d0.Close()
	if err := CheckParent(d1, d0); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("CheckParent of a cycle: %v", err)
	}
	if err := CheckParent(d1, d1); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("CheckParent of itself: %v", err)
	}
	l2 := filepath.Join(root, "l2")
	writeLevel(t, l2, "", []ent{{vaddr: 10, nr: 2, fill: 'c'}})
	d2, err := images.Open(l2, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := CheckParent(d1, d2); err != nil {
		t.Fatalf("CheckParent of a plain parent: %v", err)
	}
}

// readSource returns page number → fill byte of what src yields.
func readSource(t *testing.T, src *ChainSource) map[uint64]byte {
	t.Helper()
	got := map[uint64]byte{}
	for {
		v, n, err := src.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n*ps)
		if _, err := io.ReadFull(src, b); err != nil {
			t.Fatal(err)
		}
		f, off := src.RunFile()
		fb := make([]byte, ps)
		if _, err := f.ReadAt(fb, off-int64(n*ps)); err != nil || !bytes.Equal(fb, b[:ps]) {
			t.Fatalf("run at page %d: RunFile does not hold its data (%v)", v/ps, err)
		}
		for i := uint64(0); i < n; i++ {
			got[v/ps+i] = b[i*ps]
		}
	}
}

// SourceRange and SourceExcept yield exactly the chain's pages inside
// (outside) the ranges, each from the level that holds it; ReadAt reads
// a run's level.
func TestChainSourceClipped(t *testing.T) {
	root := t.TempDir()
	l0, l1 := filepath.Join(root, "l0"), filepath.Join(root, "l1")
	writeLevel(t, l0, "", []ent{{vaddr: 10, nr: 10, fill: 'a'}})
	writeLevel(t, l1, "../l0", []ent{{vaddr: 10, nr: 3, parent: true}, {vaddr: 13, nr: 2, fill: 'b'}, {vaddr: 15, nr: 5, parent: true}})
	d, err := images.Open(l1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	top, err := images.OpenPages(d, images.PagemapImg(1))
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	if !NeedsParent(top) {
		t.Fatal("NeedsParent: false for a pagemap with PARENT entries")
	}
	c, err := OpenChain(d, images.PagemapImg(1), top)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	all := map[uint64]byte{10: 'a', 11: 'a', 12: 'a', 13: 'b', 14: 'b', 15: 'a', 16: 'a', 17: 'a', 18: 'a', 19: 'a'}
	in := readSource(t, c.SourceRange(12*ps, 16*ps))
	out := readSource(t, c.SourceExcept([][2]uint64{{12 * ps, 14 * ps}, {15 * ps, 16 * ps}}))
	for p, f := range all {
		if want := p >= 12 && p < 16; (in[p] == f) != want {
			t.Errorf("SourceRange: page %d: %q (in range %v)", p, in[p], want)
		}
		if want := !(p >= 12 && p < 14 || p == 15); (out[p] == f) != want {
			t.Errorf("SourceExcept: page %d: %q (kept %v)", p, out[p], want)
		}
	}
	if len(in) != 4 || len(out) != 7 {
		t.Errorf("SourceRange %v, SourceExcept %v", in, out)
	}
	for _, r := range c.Runs() {
		b := make([]byte, ps)
		if _, err := c.ReadAt(r.Level, b, r.Vaddr); err != nil || b[0] != all[r.Vaddr/ps] {
			t.Errorf("ReadAt level %d page %d: %q, %v", r.Level, r.Vaddr/ps, b[0], err)
		}
	}
	if _, err := c.ReadAt(5, make([]byte, ps), 10*ps); err == nil {
		t.Error("ReadAt of a level the chain does not have worked")
	}
}
